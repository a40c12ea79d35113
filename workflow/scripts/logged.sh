# logged LOG COMMAND...: run a stage with its output (stdout and stderr) in LOG.
#
# On failure the console gets "<stage> failed; log: LOG" and the stage's `error:` message
# (after a crash: its last lines), and the exit status is passed on. The output's tail is
# also kept in memory, so the reason reaches the console when LOG itself cannot be
# written (a full disk: the log would be empty and the reason lost with it).
#
# SIGTERM and SIGUSR1 (preemption, a cluster's early warning) are the stage's to handle:
# a cluster signals every process of the job at once, so the shells here wait for the
# stage instead of dying, and the pipes that carry its output ignore them, so that
# training's last words (the checkpoint it wrote on the signal) still reach LOG.
logged() {
    local log=$1 out status
    shift
    trap ':' TERM USR1
    out=$(
        trap ':' TERM USR1
        "$@" 2>&1 | (trap '' TERM USR1; exec tee "$log" 2>/dev/null) | (trap '' TERM USR1; exec tail -n 200)
        exit "${PIPESTATUS[0]}"
    ) && status=0 || status=$?
    if [ "$status" -ne 0 ]; then
        echo "$1 $2 failed; log: $log" >&2
        printf '%s\n' "$out" | grep -A 100000 '^error:' >&2 || printf '%s\n' "$out" | tail -n 5 >&2
        if [ -n "$out" ] && [ ! -s "$log" ]; then
            local folder
            folder=$(dirname "$log")
            echo "(the log could not be written: $(df -Pk "$folder" | awk 'NR == 2 {print $4}') KiB free on the disk of $folder)" >&2
        fi
    fi
    return "$status"
}
