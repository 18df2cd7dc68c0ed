"""The CD agent: poll the registry → pull → swap the app container → health check → roll back."""
