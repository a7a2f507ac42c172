"""The forward proxy on the bridge: the lab hosts' only way to the package registries."""

from __future__ import annotations

PORT = 3142


def tinyproxy_conf(listen_ip: str, subnet: str, log_path: str) -> str:
    """tinyproxy settings: listen on the bridge only, serve only the lab subnet."""
    return "\n".join(
        [
            "# Written by cmdeploy lab.",
            "User tinyproxy",
            "Group tinyproxy",
            f"Port {PORT}",
            f"Listen {listen_ip}",
            f"Allow {subnet}",
            "Timeout 600",
            "MaxClients 200",
            f'LogFile "{log_path}"',
            "LogLevel Notice",
            "DisableViaHeader Yes",
            # No ConnectPort lines: CONNECT to any port, registries may serve HTTPS anywhere.
            "",
        ]
    )


def proxy_url(listen_ip: str) -> str:
    return f"http://{listen_ip}:{PORT}"
