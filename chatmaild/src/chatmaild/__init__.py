"""Services of a chatmail relay."""
