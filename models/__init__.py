"""River model factories, persistence and feedback learning."""
