#!/bin/sh
# Test bootloader for RAUC's `custom` backend: the Rust tests' stand-in for
# U-Boot + meta-harmony's boot script. It keeps the boot script's variables
# (BOOT_ORDER, BOOT_<slot>_LEFT, BOOT_<slot>_UNCONFIRMED) in the file named
# by $HARMONY_BOOT_STATE and must decide every boot exactly as
# meta-harmony/recipes-bsp/u-boot/files/boot.cmd.in does:
# qemu-tests/boot_script.py (scenario 1) runs the real boot.scr under the
# real U-Boot and this script on the same sequence of steps and compares the
# state after each one.
#
# RAUC calls (what RAUC's uboot backend writes, with system.conf's
# boot-attempts=3, boot-attempts-primary=2):
#   get-primary | set-primary SLOT | get-state SLOT |
#   set-state SLOT good|bad | get-current
# Tests call:
#   simulate-boot  what U-Boot does at power-on (boot.cmd.in): the first slot
#                  in BOOT_ORDER with attempts left; a trial slot (1..2) spends
#                  one, a committed slot (3) counts an unconfirmed boot and is
#                  left after 3 of them; no slot left -> both get another
#                  trial. Prints the slot.
#   confirm        what harmony-boot-confirm.service does once the booted
#                  system is up: a committed booted slot's count goes to 0.
set -eu
state="${HARMONY_BOOT_STATE:?HARMONY_BOOT_STATE must name the boot state file}"
committed=3        # RAUC mark-good (boot-attempts)
trial=2            # RAUC set-primary (boot-attempts-primary)
committed_tries=3  # boot.cmd.in harmony_committed_tries

if [ ! -f "$state" ]; then
    printf 'BOOT_ORDER="A B"\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\nBOOT_A_UNCONFIRMED=0\nBOOT_B_UNCONFIRMED=0\nBOOTED=A\n' \
        "$committed" "$committed" > "$state"
fi
BOOT_A_UNCONFIRMED=0
BOOT_B_UNCONFIRMED=0
. "$state"

save() {
    tmp="$state.tmp"
    printf 'BOOT_ORDER="%s"\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\nBOOT_A_UNCONFIRMED=%s\nBOOT_B_UNCONFIRMED=%s\nBOOTED=%s\n' \
        "$BOOT_ORDER" "$BOOT_A_LEFT" "$BOOT_B_LEFT" "$BOOT_A_UNCONFIRMED" "$BOOT_B_UNCONFIRMED" "$BOOTED" > "$tmp"
    mv "$tmp" "$state"
}

left_of() { eval "echo \$BOOT_$1_LEFT"; }
set_left() { eval "BOOT_$1_LEFT=$2"; }
unconfirmed_of() { eval "echo \$BOOT_$1_UNCONFIRMED"; }
set_unconfirmed() { eval "BOOT_$1_UNCONFIRMED=$2"; }
in_order() { for s in $BOOT_ORDER; do [ "$s" = "$1" ] && return 0; done; return 1; }
without() { out=""; for s in $BOOT_ORDER; do [ "$s" = "$1" ] || out="$out $s"; done; echo $out; }

check_slot() {
    case "$1" in A|B) ;; *) echo "unknown slot $1" >&2; exit 1 ;; esac
}

# One boot as boot.cmd.in decides it; sets BOOTED.
boot() {
    BOOTED=""
    for s in $BOOT_ORDER; do
        [ -z "$BOOTED" ] || continue
        n="$(left_of "$s")"
        [ "$n" -gt 0 ] || continue
        if [ "$n" -lt "$committed" ]; then
            set_left "$s" $((n - 1))
            set_unconfirmed "$s" 0
            BOOTED="$s"
        elif [ "$(unconfirmed_of "$s")" -lt "$committed_tries" ]; then
            set_unconfirmed "$s" $(($(unconfirmed_of "$s") + 1))
            BOOTED="$s"
        else
            # A committed slot that stopped booting: left for the next one.
            set_left "$s" 0
            set_unconfirmed "$s" 0
        fi
    done
    if [ -z "$BOOTED" ]; then
        BOOT_A_LEFT=$trial
        BOOT_B_LEFT=$trial
        BOOT_A_UNCONFIRMED=0
        BOOT_B_UNCONFIRMED=0
        case "$BOOT_ORDER" in "B"|"B A") BOOT_ORDER="B A" ;; *) BOOT_ORDER="A B" ;; esac
        BOOTED="${BOOT_ORDER%% *}"
        set_left "$BOOTED" $((trial - 1))
    fi
}

cmd="${1:-}"
case "$cmd" in
get-primary)
    for s in $BOOT_ORDER; do
        if [ "$(left_of "$s")" -gt 0 ]; then echo "$s"; exit 0; fi
    done
    echo "no bootable slot" >&2; exit 1 ;;
set-primary)
    check_slot "$2"
    BOOT_ORDER="$2 $(without "$2")"
    in_order A || BOOT_ORDER="$BOOT_ORDER A"
    in_order B || BOOT_ORDER="$BOOT_ORDER B"
    set_left "$2" "$trial"
    save ;;
get-state)
    check_slot "$2"
    if in_order "$2" && [ "$(left_of "$2")" -gt 0 ]; then echo good; else echo bad; fi ;;
set-state)
    check_slot "$2"
    case "$3" in
    good)
        in_order "$2" || BOOT_ORDER="$BOOT_ORDER $2"
        set_left "$2" "$committed" ;;
    bad)
        BOOT_ORDER="$(without "$2")"
        set_left "$2" 0 ;;
    *) echo "unknown state $3" >&2; exit 1 ;;
    esac
    save ;;
get-current)
    echo "$BOOTED" ;;
simulate-boot)
    boot
    save
    echo "$BOOTED" ;;
confirm)
    if [ "$(left_of "$BOOTED")" = "$committed" ] && [ "$(unconfirmed_of "$BOOTED")" != 0 ]; then
        set_unconfirmed "$BOOTED" 0
        save
    fi ;;
*)
    echo "usage: $0 get-primary|set-primary S|get-state S|set-state S good|bad|get-current|simulate-boot|confirm" >&2
    exit 1 ;;
esac
