"""The emulator backend: hv1 on the Unicorn CPU emulator, for hosts without /dev/kvm."""
