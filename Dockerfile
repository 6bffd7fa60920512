# Build the ordersaga binary, then ship it on a slim Debian image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin ordersaga

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ordersaga /usr/local/bin/ordersaga
EXPOSE 8080
ENTRYPOINT ["ordersaga", "serve"]
