# The example host server.
#   docker build -t mesh-subscriptions .
#   docker run -e DATABASE_URL=postgres://… -p 3000:3000 mesh-subscriptions
# With DATABASE_URL the embedded PostgreSQL stays off; without it, it starts one under /data.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY web ./web
COPY scripts/build-web.ts ./scripts/
RUN npm run build

# Production dependencies only: the plugin's, and the example server's own runtime packages
# (package.json "exampleServerDependencies", dev dependencies of the library, patch-package among
# them), moved to
# "dependencies" here so that npm installs them at the versions the lock file pins.
FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# The postgres driver's patch (README, "The postgres driver patch"), applied by postinstall.
COPY patches ./patches
RUN node -e "const fs=require('fs'),p=require('./package.json');for(const n of p.exampleServerDependencies){p.dependencies[n]=p.devDependencies[n];delete p.devDependencies[n]}fs.writeFileSync('package.json',JSON.stringify(p,null,2))" \
 && npm install --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000 DATA_DIR=/data SHUTDOWN_DRAIN_MS=5000
WORKDIR /app
COPY --from=deps /app/package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY openapi ./openapi
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME /data
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM: /readyz fails for SHUTDOWN_DRAIN_MS, then sockets get 1001 and the process exits.
STOPSIGNAL SIGTERM
CMD ["node", "--enable-source-maps", "dist/server/main.js"]
