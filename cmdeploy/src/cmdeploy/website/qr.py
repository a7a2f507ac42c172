"""The invite: the URI behind the join button and the QR code, and the QR code's PNG."""

from __future__ import annotations

import functools
import io

import qrcode
from chatmaild.config import Config
from PIL import Image, ImageDraw

# `dcaccount:<domain>` makes Delta Chat core pick the address and password itself: a
# 9-character local part and a 22-character password (core 2.65, real-clients.md §2.3).
CORE_LOCALPART_LENGTH = 9
CORE_PASSWORD_LENGTH = 22


def invite_uri(config: Config) -> str:
    """The URI behind the join button and the QR code.

    Public relays: ``DCACCOUNT:https://<domain>/new``; the app POSTs there and gets a fresh
    address and password. Underscore (self-signed) relays: ``dcaccount:<domain>``, so the
    app invents the credentials and no HTTPS request is needed at all; core accepts the
    self-signed certificate of a ``_`` host for the logins that follow. That only works if
    the relay allows core's 9-character local parts and 22-character passwords; otherwise
    the ``/new`` form is used, which core also accepts over a self-signed ``_`` host.
    """
    domain = config.mail_domain
    if (
        config.tls_cert_mode == "self"
        and config.username_min_length <= CORE_LOCALPART_LENGTH <= config.username_max_length
        and config.password_min_length <= CORE_PASSWORD_LENGTH
    ):
        return f"dcaccount:{domain}"
    return f"DCACCOUNT:https://{domain}/new"


def qr_filename(config: Config) -> str:
    return f"qr-chatmail-invite-{config.mail_domain}.png"


@functools.cache
def _logo(size: int) -> Image.Image:
    """A speech bubble holding a delta, in the spirit of the Delta Chat logo."""
    scale = 8  # draw large, then shrink: Pillow has no anti-aliased shapes
    s = size * scale
    img = Image.new("RGBA", (s, s), "white")
    draw = ImageDraw.Draw(img)
    pad = s // 10
    draw.ellipse((pad, pad, s - pad, s - pad - s // 14), fill="black")
    # the bubble's tail, bottom left
    draw.polygon(
        [(s * 0.22, s * 0.68), (s * 0.12, s * 0.9), (s * 0.42, s * 0.8)],
        fill="black",
    )
    top, left, right, bottom = (s * 0.28, s * 0.3, s * 0.7, s * 0.64)
    draw.polygon([(s / 2, top), (left, bottom), (right, bottom)], fill="white")
    inset = s * 0.07
    draw.polygon(
        [
            (s / 2, top + inset * 1.9),
            (left + inset * 1.7, bottom - inset),
            (right - inset * 1.7, bottom - inset),
        ],
        fill="black",
    )
    return img.resize((size, size), Image.Resampling.LANCZOS)


def make_qr_png(uri: str, size: int = 384) -> bytes:
    """A scannable QR code PNG of ``uri`` with the logo in its centre.

    Error correction H survives the ~3 % of modules the logo covers; modules are scaled with
    nearest-neighbour so their edges stay sharp for cameras.
    """
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_H, box_size=1, border=1)
    qr.add_data(uri)
    qr.make(fit=True)
    code = qr.make_image(fill_color="black", back_color="white").get_image().convert("RGBA")
    # whole pixels per module: uneven module widths make cameras work harder
    module = (size - 2 * (size // 64)) // code.size[0]
    code = code.resize((module * code.size[0],) * 2, Image.Resampling.NEAREST)
    canvas = Image.new("RGBA", (size, size), "white")
    offset = (size - code.size[0]) // 2
    canvas.paste(code, (offset, offset))
    logo_size = size // 6
    offset = (size - logo_size) // 2
    canvas.paste(_logo(logo_size), (offset, offset))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()
