"""`tasks-exporter --demo`: the simulators on loopback, and a config that points at them.

The demo shows the whole organisation view: the fake portal's company structure and workgroups (`groups:
auto`), the fake workspace's departments and employee tags, and a `people` section that matches the two by
e-mail (the workspace's users are the portal's first employees, some e-mails deliberately not matching).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog

from exporter.config import Bitrix24Config, Config, PachcaConfig, PeopleConfig, Secret
from exporter.simulator import bitrix24 as b24sim
from exporter.simulator import pachca as pachcasim
from exporter.simulator import serve

log = structlog.get_logger()

DEMO_WORKGROUPS = 4  # readable workgroups and projects, besides the simulator's special ones


@contextlib.asynccontextmanager
async def demo_config(interval: float = 15.0, users: int = 40, reminders: int = 300) -> AsyncIterator[Config]:
    """Start a realistic fake portal and workspace in-process; yield a Config for them."""
    portal = b24sim.generate_portal(users, groups=DEMO_WORKGROUPS, drift=True, latency=0.05)
    workspace = pachcasim.generate_workspace(reminders)
    async with serve(b24sim.create_app(portal)) as b24_url, serve(pachcasim.create_app(workspace)) as p_url:
        log.info("demo_simulators", bitrix24=b24_url, pachca=p_url, users=users, reminders=reminders)
        yield Config(
            bitrix24=(Bitrix24Config(name="demo-portal",
                                     webhook_url=Secret(f"{b24_url}{portal.webhook_path}"),
                                     groups=None, interval=interval),),
            pachca=(PachcaConfig(name="demo-workspace", token=Secret(workspace.token),
                                 base_url=f"{p_url}/api/shared/v1", interval=interval),),
            people=PeopleConfig(match="email", label="name"),
        )
