#!/bin/sh
# Test bootloader for RAUC's `custom` backend. Keeps U-Boot-like boot state
# (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT) in the file named by
# $HARMONY_BOOT_STATE so tests can "reboot" and see fallback happen.
#
# RAUC calls: get-primary | set-primary SLOT | get-state SLOT |
#             set-state SLOT good|bad | get-current
# Tests call: simulate-boot (what U-Boot does at power-on: pick the first
#             slot in BOOT_ORDER with tries left, spend one try, print it).
set -eu
state="${HARMONY_BOOT_STATE:?HARMONY_BOOT_STATE must name the boot state file}"
tries=3

if [ ! -f "$state" ]; then
    printf 'BOOT_ORDER="A B"\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\nBOOTED=A\n' "$tries" "$tries" > "$state"
fi
. "$state"

save() {
    tmp="$state.tmp"
    printf 'BOOT_ORDER="%s"\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\nBOOTED=%s\n' \
        "$BOOT_ORDER" "$BOOT_A_LEFT" "$BOOT_B_LEFT" "$BOOTED" > "$tmp"
    mv "$tmp" "$state"
}

left_of() { eval "echo \$BOOT_$1_LEFT"; }
set_left() { eval "BOOT_$1_LEFT=$2"; }
in_order() { for s in $BOOT_ORDER; do [ "$s" = "$1" ] && return 0; done; return 1; }
without() { out=""; for s in $BOOT_ORDER; do [ "$s" = "$1" ] || out="$out $s"; done; echo $out; }

check_slot() {
    case "$1" in A|B) ;; *) echo "unknown slot $1" >&2; exit 1 ;; esac
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
    set_left "$2" "$tries"
    save ;;
get-state)
    check_slot "$2"
    if in_order "$2" && [ "$(left_of "$2")" -gt 0 ]; then echo good; else echo bad; fi ;;
set-state)
    check_slot "$2"
    case "$3" in
    good)
        in_order "$2" || BOOT_ORDER="$BOOT_ORDER $2"
        set_left "$2" "$tries" ;;
    bad)
        BOOT_ORDER="$(without "$2")"
        set_left "$2" 0 ;;
    *) echo "unknown state $3" >&2; exit 1 ;;
    esac
    save ;;
get-current)
    echo "$BOOTED" ;;
simulate-boot)
    for s in $BOOT_ORDER; do
        n="$(left_of "$s")"
        if [ "$n" -gt 0 ]; then
            set_left "$s" $((n - 1))
            BOOTED="$s"
            save
            echo "$s"
            exit 0
        fi
    done
    echo "no bootable slot" >&2; exit 1 ;;
*)
    echo "usage: $0 get-primary|set-primary S|get-state S|set-state S good|bad|get-current|simulate-boot" >&2
    exit 1 ;;
esac
