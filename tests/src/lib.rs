//! Test equipment for armfleet: the virtual phone, the k3s stand-in, QEMU boot checks.
