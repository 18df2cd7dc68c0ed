# Fixture modules live in tests/support/, one per real component, so each stays small.
pytest_plugins = [
    "tests.support.docker_env",
    "tests.support.registry_server",
    "tests.support.cd_apps",
    "tests.support.registry_auth",
    "tests.support.smtp_server",
    "tests.support.notify_server",
    "tests.support.git_repos",
    "tests.support.reliability",
    "tests.support.ci_agent_server",
    "tests.support.fault_proxy",
    "tests.support.proxy_world",
    "tests.support.swarm_env",
    "tests.support.stacks",
    "tests.support.build_hosts",
    "tests.support.many_apps",
    "tests.support.registry_hints",
]
