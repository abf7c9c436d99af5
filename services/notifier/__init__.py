"""The notifier: announces bans (mail, webhook) and forgets expired ones."""
