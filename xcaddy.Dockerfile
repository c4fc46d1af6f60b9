# A Caddy image with the s3_media_cache module.
#
#   docker build -f xcaddy.Dockerfile -t caddy-s3-media-cache .
#
# The module is not published yet, so the builder compiles this checkout with
# scripts/build, the same xcaddy line CI runs. Once it is published, the
# builder stage is Caddy's usual recipe:
#
#   FROM caddy:2.11-builder AS builder
#   RUN xcaddy build v2.11.9 --with github.com/s3mediacache/caddy-s3-media-cache

FROM caddy:2.11-builder AS builder
# The builder image is Alpine; our scripts are bash.
RUN apk add --no-cache bash
WORKDIR /src
# Tools before source, so this layer is reused when only the source changes.
# install-tools pins xcaddy to the version CI uses, whatever the image ships.
COPY scripts/ scripts/
RUN scripts/install-tools xcaddy
COPY . .
RUN scripts/build /usr/bin/caddy

FROM caddy:2.11
COPY --from=builder /usr/bin/caddy /usr/bin/caddy
