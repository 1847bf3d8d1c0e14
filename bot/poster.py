"""A printable door poster: QR codes for the site's web chat and Telegram deep link."""

from __future__ import annotations

from pathlib import Path

import qrcode
from PIL import Image, ImageDraw, ImageFont

from core.config import Settings
from core.i18n import Catalogs
from core.sites import Site

WIDTH, HEIGHT = 1240, 1754  # A4 at 150 dpi
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)


def links(settings: Settings, site: Site) -> dict[str, str]:
    """The links a site's poster carries: web chat always, Telegram when the bot is named."""
    base = settings.public_url.rstrip("/") or f"http://{settings.host}:{settings.port}"
    found = {"web": f"{base}/?site={site.code}"}
    if settings.telegram_bot_username:
        name = settings.telegram_bot_username.lstrip("@")
        found["telegram"] = f"https://t.me/{name}?start=site_{site.code}"
    return found


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for candidate in FONT_CANDIDATES:
        if Path(candidate).exists():
            return ImageFont.truetype(candidate, size)
    return ImageFont.load_default(size)


def _qr(data: str, size: int) -> Image.Image:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2)
    code.add_data(data)
    code.make(fit=True)
    image: Image.Image = code.make_image(fill_color="black", back_color="white").convert("RGB")
    return image.resize((size, size), Image.Resampling.NEAREST)


def write_poster(settings: Settings, site: Site, catalogs: Catalogs, path: Path) -> None:
    """Draw the poster for ``site`` (titles in Chinese and English) and save it as PNG."""
    poster = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(poster)
    title, body, small = _font(76), _font(38), _font(28)
    y = 90
    for lang, font in (("zh_Hans", title), ("en", body)):
        text = catalogs.t(lang, "poster.title")
        draw.text((WIDTH // 2, y), text, font=font, fill="#1f4e5f", anchor="mt")
        y += 110 if lang == "zh_Hans" else 70
    for lang in ("zh_Hans", "en"):
        draw.text((WIDTH // 2, y), site.name(lang), font=body, fill="black", anchor="mt")
        y += 60
    y += 30
    found = links(settings, site)
    size = 520 if len(found) == 1 else 460
    xs = [WIDTH // 2] if len(found) == 1 else [WIDTH // 4 + 10, 3 * WIDTH // 4 - 10]
    for x, (kind, url) in zip(xs, found.items(), strict=True):
        poster.paste(_qr(url, size), (x - size // 2, y))
        label_y = y + size + 20
        for lang, font in (("zh_Hans", body), ("en", small)):
            draw.text(
                (x, label_y),
                catalogs.t(lang, f"poster.scan_{kind}"),
                font=font,
                fill="black",
                anchor="mt",
            )
            label_y += 52
        draw.text((x, label_y), url, font=small, fill="#555555", anchor="mt")
    y += size + 220
    for lang in ("zh_Hans", "en"):
        lines = [catalogs.t(lang, "poster.help_now")] + [
            f"{h.name(lang)}  {h.number}" for h in site.hotlines
        ]
        for line in lines:
            draw.text(
                (WIDTH // 2, y),
                line,
                font=small if line != lines[0] else body,
                fill="#8b1a1a" if line == lines[0] else "black",
                anchor="mt",
            )
            y += 46 if line != lines[0] else 58
        y += 30
    path.parent.mkdir(parents=True, exist_ok=True)
    poster.save(path, "PNG")
