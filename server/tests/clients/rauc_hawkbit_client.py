"""RAUC's Python hawkBit client (PyPI `rauc-hawkbit`, the DDI layer of RAUC's `RaucDBUSDDIClient`) against
otter-server: the same conversation `RaucDBUSDDIClient.poll_base_resource` has, with RAUC's D-Bus install replaced
by the feedback RAUC's completion callback sends. Run by server/tests/rauc_hawkbit.rs.

    rauc_hawkbit_client.py HOST:PORT CONTROLLER_ID TOKEN DOWNLOAD_PATH

Exits 0 once it has downloaded one deployment, checked its MD5 as RAUC's client does, and reported it closed;
prints what it did, one line per step.
"""

import asyncio
import re
import sys
from datetime import datetime, timedelta

import aiohttp
from rauc_hawkbit.ddi.client import ConfigStatusExecution, ConfigStatusResult, DDIClient
from rauc_hawkbit.ddi.deployment_base import DeploymentStatusExecution, DeploymentStatusResult


def say(*words):
    print(*words, flush=True)


async def run(host, controller_id, token, download_path):
    async with aiohttp.ClientSession() as session:
        ddi = DDIClient(session, host, False, token, "DEFAULT", controller_id)
        for _ in range(60):
            base = await ddi()
            links = base.get("_links", {})
            say("poll", " ".join(sorted(links)) or "-", base["config"]["polling"]["sleep"])
            if "configData" in links:
                await ddi.configData(ConfigStatusExecution.closed, ConfigStatusResult.success,
                                     client="rauc-hawkbit", rauc_version="1.8")
                say("configData sent")
            if "deploymentBase" in links:
                href = links["deploymentBase"]["href"]
                # The same pattern RaucDBUSDDIClient.process_deployment uses.
                action_id, resource = re.search(r"/deploymentBase/(.+)\?c=(.+)$", href).groups()
                info = await ddi.deploymentBase[action_id](resource)
                artifact = info["deployment"]["chunks"][0]["artifacts"][0]
                url = artifact["_links"].get("download", artifact["_links"].get("download-http"))["href"]
                md5 = await ddi.get_binary(url, download_path)
                say("downloaded", artifact["filename"], "md5", "ok" if md5 == artifact["hashes"]["md5"] else "BAD")
                if md5 != artifact["hashes"]["md5"]:
                    return 1
                action = ddi.deploymentBase[action_id]
                # What RAUC's Progress and Completed callbacks send.
                await action.feedback(DeploymentStatusExecution.proceeding, DeploymentStatusResult.none,
                                      ["Installing"], percentage=50)
                await action.feedback(DeploymentStatusExecution.closed, DeploymentStatusResult.success,
                                      ["Rauc bundle update completed with result: 0"])
                say("feedback closed success", action_id)
                return 0
            t = datetime.strptime(base["config"]["polling"]["sleep"], "%H:%M:%S")
            await asyncio.sleep(min(timedelta(hours=t.hour, minutes=t.minute, seconds=t.second).total_seconds(), 1))
        say("no deployment offered")
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run(*sys.argv[1:5])))
