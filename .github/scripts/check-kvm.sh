#!/usr/bin/env bash
# Says which accelerator the guests will run under. Where VMREPRO_ACCEL=kvm
# insists on KVM (the matrix does), a runner without usable KVM fails here,
# before anything is built, instead of running every guest under TCG.
#
# Inside a privileged container, `--device /dev/kvm` is a no-op: Docker
# skips a same-path device mapping in privileged mode (moby#35991,
# moby PR 40291), so the device's presence proves nothing by itself.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ "${VMREPRO_ACCEL:-}" = kvm ]; then
  [ -c /dev/kvm ] || die "VMREPRO_ACCEL=kvm, but /dev/kvm is not a character device here"
  if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    die "VMREPRO_ACCEL=kvm, but /dev/kvm is not readable and writable"
  fi
  grep -Eqw 'vmx|svm' /proc/cpuinfo || die "VMREPRO_ACCEL=kvm, but the CPU shows neither VMX nor SVM"
fi
# The harness's own verdict, the one every trial will use; it fails the
# same way when KVM is insisted on and unusable.
vmrepro setup | grep '^accelerator'
