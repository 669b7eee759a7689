# The knative-xds control-plane image.
#
#   docker build -t knative-xds:dev .
#
# deploy/control-plane.yaml runs it as `knative-xds serve --kubernetes` (KIngresses of
# our class, their status written) with its ports and gateway names spelled out; the
# default command below is the same with the flags' defaults. The gateway is a stock
# Envoy image; this one holds no Envoy binary.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY knative_xds/ knative_xds/
# Wheels of the package and every dependency, so the final stage installs offline
# and carries no build leftovers.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[kubernetes]"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 knative-xds \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin knative-xds
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "knative-xds[kubernetes]" \
 && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 18000 8090
ENTRYPOINT ["knative-xds"]
CMD ["serve", "--kubernetes", "--kubernetes-input", "ingress", "--xds-port", "18000", "--health-port", "8090"]
