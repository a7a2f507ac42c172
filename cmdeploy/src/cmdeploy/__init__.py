"""Deploy and operate chatmail relays."""
