# trio-gateway in a container: slim, non-root, health-checked, stopped by a graceful drain.
#
#   docker build -t trio-gateway .
#   docker run -d --name gw -p 18789:18789 --stop-timeout 75 \
#       -v tg-home:/var/lib/trio-gateway \
#       -v "$PWD/gateway.token:/run/secrets/gateway_token:ro" trio-gateway
#
# Grace period: `docker stop` sends STOPSIGNAL (SIGTERM: drain, then exit 0) and kills the
# process after its timeout. Give it at least the drain timeout (gateway.drain.timeoutSeconds,
# default 60) + 15 s for cleanup and channel stops: `--stop-timeout 75` here,
# `stop_grace_period: 75s` in compose.yaml, `terminationGracePeriodSeconds: 75` on Kubernetes.
#
# Token: bound to 0.0.0.0 the gateway refuses to start without an admin token it did not make
# up itself. Mount one as a secret at $TRIO_GATEWAY_TOKEN_FILE (below): mode 0600 (or 0400),
# owned by uid 10001 (the gateway refuses a token file group or others can read; on Kubernetes
# `defaultMode: 0400` with `runAsUser`/`fsGroup` 10001). Or unset that variable and create the
# token in the home volume once:
#   docker run --rm -e TRIO_GATEWAY_TOKEN_FILE= -v tg-home:/var/lib/trio-gateway trio-gateway trio-gateway token create

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY trio_gateway ./trio_gateway
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/trio-gateway --create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV TRIO_GATEWAY_HOME=/var/lib/trio-gateway \
    TRIO_GATEWAY_TOKEN_FILE=/run/secrets/gateway_token \
    PYTHONUNBUFFERED=1
# Numeric, not `gateway`: Kubernetes can check `runAsNonRoot` only against a numeric user
# (a name would need the image's /etc/passwd, which the kubelet does not read).
USER 10001:10001
WORKDIR /var/lib/trio-gateway
VOLUME ["/var/lib/trio-gateway"]
EXPOSE 18789
# slim has no curl: a few lines of Python ask /healthz on the port the gateway recorded in
# gateway.state.json (so a port set in gateway.json is followed). Draining counts as healthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import json, os, sys, urllib.request; state = json.load(open(os.path.join(os.environ['TRIO_GATEWAY_HOME'], 'gateway.state.json'))); reply = urllib.request.urlopen(f\"http://127.0.0.1:{state['port']}/healthz\", timeout=4); sys.exit(0 if json.load(reply)['status'] in ('ok', 'draining') else 1)"]
STOPSIGNAL SIGTERM
CMD ["trio-gateway", "gateway", "start", "--bind", "0.0.0.0"]
