"""Request strategies that orchestrate several generations (voting now; more to come)."""
