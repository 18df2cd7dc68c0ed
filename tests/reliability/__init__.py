"""Reliability and security suite (issue 5): each test is one row of docs/RELIABILITY.md."""
