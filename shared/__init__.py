"""The library both agents use: settings, logging, email, registry client, versions, run history."""
