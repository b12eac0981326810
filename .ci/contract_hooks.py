"""schemathesis hooks for `.ci/contract`.

The fuzzer writes whatever URL it likes into a pool's `callback_url` and `intercept_url`, and
hush would then deliver events to it. So that a contract run never dials out of this machine,
every such URL is pointed at a loopback port nobody listens on (`CONTRACT_SINK_URL`): hush
still stores the pool, records its events and fails their delivery, all locally.
"""

import os

import schemathesis

SINK = os.environ["CONTRACT_SINK_URL"]
URL_FIELDS = ("callback_url", "intercept_url")


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if isinstance(body, dict):
        for field in URL_FIELDS:
            if isinstance(body.get(field), str) and body[field]:
                body[field] = SINK
