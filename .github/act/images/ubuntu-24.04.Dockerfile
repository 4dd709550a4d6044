# The runner image for `runs-on: ubuntu-24.04` under act: bookworm (this
# machine's registries serve Debian, not Ubuntu) with what the workflows'
# non-container jobs take from GitHub's ubuntu-24.04 image: bash, git, curl,
# zstd, a C toolchain, rustup, Node.js with npm, Python with venv, and
# shellcheck; the CA variables point every tool at the system's bundle.
FROM debian:bookworm
ENV DEBIAN_FRONTEND=noninteractive \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
RUN apt-get -o Acquire::Retries=3 update \
 && apt-get -o Acquire::Retries=3 install -y --no-install-recommends \
      build-essential git zstd xz-utils jq sudo nodejs npm python3 python3-venv python3-pip shellcheck \
 && rm -rf /var/lib/apt/lists/*
# rustup as GitHub's image has it, with no toolchain: toolchain.sh installs
# the pinned one, as on GitHub. rustup-init comes from static.rust-lang.org,
# where rustup's own installer script fetches it too.
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf -o /tmp/rustup-init https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init \
 && chmod +x /tmp/rustup-init \
 && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain none \
 && rm /tmp/rustup-init
