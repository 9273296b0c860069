"""What every service shares and nothing domain-specific: settings, embedded servers, the CLI."""
