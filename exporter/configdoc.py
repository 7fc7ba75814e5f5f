"""docs/configuration.md, rendered from the key declarations so the docs cannot drift from the parser.

    python -m exporter.configdoc > docs/configuration.md
"""

from __future__ import annotations

from exporter.config import Config
from exporter.schema import reference
from exporter.webconfig import WebConfig

_HEADER = """\
# Configuration reference

<!-- Generated from exporter/config.py and exporter/webconfig.py by `python -m exporter.configdoc`;
     edit the declarations there, not this file. -->

## Config file (`--config`)

Check a file with `tasks-exporter --check-config --config FILE`; `config.example.yaml` is a commented example.
Every string may use `${VAR}`, replaced by the environment variable VAR (unset: an error). `bitrix24` and
`pachca` may each be one mapping or a list of them, to watch several portals or workspaces; either may be left
out. A nested key is written here with dots: `rate_limit.burst` is `burst` inside `rate_limit`.
"""

_WEB = """
## Web config file (`--web.config.file`)

The Prometheus exporter-toolkit format. Strings are taken literally (no `${VAR}`); relative paths are taken
from the web config's folder. The file, and every file it names, is read again when it changes (checked at
each new connection and request), so a renewed certificate is served without a restart.
"""


def render() -> str:
    return f"{_HEADER}\n{reference(Config)}{_WEB}\n{reference(WebConfig)}"


if __name__ == "__main__":
    print(render(), end="")
