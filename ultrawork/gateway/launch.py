"""The gateway's mitmproxy process: a master with only the addons the gateway needs.

``mitmdump`` loads about thirty addons, several with heavy imports of their own (Flask
for the onboarding app that serves ``mitm.it``, LDAP for proxy authentication, the
playback and export tools): about 0.4 s of a gateway's start, and surface it never uses.
This loads mitmproxy's ``addons`` package without its ``__init__`` (which imports them
all) and adds, in mitmdump's order, those that serve an HTTP/1 reverse or regular proxy:
core, block (no clients from public addresses), disable_h2c, the proxy server, the
script loader (which loads the gateway's addon), next_layer, TLS, Alt-Svc rewriting for
reverse mode, and errorcheck (a startup error ends the process). Warnings go to stderr.

    python3 launch.py '{"scripts": ["/opt/.../addon.py"], "mode": ["reverse:https://api...@8081"], ...}' [CA_DIR]

With ``CA_DIR`` (a read-only folder holding the home's CA; see ``ultrawork.gateway.ca``), its
``mitmproxy-ca.pem`` is copied into ``confdir`` first, so mitmproxy does not make one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import types


def _addons_package() -> None:
    import mitmproxy

    package = types.ModuleType("mitmproxy.addons")
    package.__path__ = [os.path.join(os.path.dirname(mitmproxy.__file__), "addons")]
    package.__package__ = "mitmproxy.addons"
    sys.modules["mitmproxy.addons"] = package


def _use_ca(ca_dir: str, confdir: str) -> None:
    os.makedirs(confdir, mode=0o700, exist_ok=True)
    with open(os.path.join(ca_dir, "mitmproxy-ca.pem"), "rb") as src:
        data = src.read()
    fd = os.open(os.path.join(confdir, "mitmproxy-ca.pem"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as dst:
        dst.write(data)


async def main(settings: dict) -> None:
    from mitmproxy import master, options
    from mitmproxy.addons import (
        block, core, disable_h2c, errorcheck, next_layer, proxyserver, script, tlsconfig, update_alt_svc,
    )

    logging.getLogger().setLevel(logging.DEBUG)     # as mitmdump: termlog filters by termlog_verbosity
    for noisy in ("asyncio", "hpack", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    opts = options.Options()
    proxy = master.Master(opts, with_termlog=True)
    proxy.addons.add(core.Core(), block.Block(), disable_h2c.DisableH2C(), proxyserver.Proxyserver(),
                     script.ScriptLoader(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
                     update_alt_svc.UpdateAltSvc(), errorcheck.ErrorCheck())
    opts.update(**settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, proxy.shutdown)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    await proxy.run()


if __name__ == "__main__":
    _addons_package()
    options_given = json.loads(sys.argv[1])
    if len(sys.argv) > 2:
        _use_ca(sys.argv[2], options_given["confdir"])
    asyncio.run(main(options_given))
