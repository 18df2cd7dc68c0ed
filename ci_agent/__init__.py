"""The CI agent: GitHub push webhook → checkout → test → build → push the next semver tag."""
