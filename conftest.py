# Fixture modules live in tests/support/, one per real component, so each stays small.
# tests/support/parallel.py: the suite runs on xdist workers (scripts/test: -n 2), and tests marked
# @pytest.mark.exclusive("why") run after all others, alone, on one worker.
pytest_plugins = [
    "tests.support.parallel",
    "tests.support.docker_env",
    "tests.support.registry_server",
    "tests.support.cd_apps",
    "tests.support.registry_auth",
    "tests.support.smtp_server",
    "tests.support.notify_server",
    "tests.support.git_repos",
    "tests.support.reliability",
    "tests.support.ci_agent_server",
    "tests.support.many_repos",
    "tests.support.fault_proxy",
    "tests.support.proxy_world",
    "tests.support.swarm_env",
    "tests.support.stacks",
    "tests.support.build_hosts",
    "tests.support.many_apps",
    "tests.support.compose_cli",
    "tests.support.compose_stack",
    "tests.support.registry_hints",
]
