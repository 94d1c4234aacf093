#!/bin/sh
# Fleet scenario: one line per VM of this test host with the first host PCI address it holds
# (from its inactive definition), then the running command line and the number of functions
# on vfio-pci. The side effect compares these lines before and after each run.
for d in $(virsh -c qemu:///system list --all --name); do
  held=$(virsh -c qemu:///system dumpxml --inactive "$d" | grep -A3 '<hostdev' |
    grep -o "bus='0x[0-9a-f]*' slot='0x[0-9a-f]*' function='0x[0-9a-f]*'" | head -2 | tr '\n' ' ')
  echo "$d $held"
done
cat /proc/cmdline
find /sys/bus/pci/drivers/vfio-pci -maxdepth 1 -name '0000:*' | wc -l
