# debian:bookworm for the workflows' container jobs under act, where no
# registry serves images: a minbase bookworm made by act.sh with mmdebstrap
# from this machine's Debian mirror, plus curl, which the stand-in actions
# fetch with, and this machine's extra CA certificates (where HTTPS goes
# through an intercepting proxy, cargo and pip refuse the registries
# without them).
FROM vmrepro-act/rootfs:bookworm
COPY certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
CMD ["bash"]
