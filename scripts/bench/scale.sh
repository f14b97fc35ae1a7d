# How the cost grows with the number of locks: sourced by scripts/bench.sh (section 8), which has
# set $elect, $mode, the backends array and the out/emit helpers, and started the servers.
#   - many held locks: 1, 100, 1,000 elects at once, each holding its own lock over `sleep`;
#   - many waiters: 1,000 elects --wait'ing on one held lock, then one release.
# Quick mode: 1 and 100 held locks, 100 waiters.

if [ "$mode" = quick ]; then
  scale_counts=1,100 scale_waiters=100 scale_window=3
else
  scale_counts=1,100,1000 scale_waiters=1000 scale_window=5
fi

out "## 8. Scaling"
out ""
out "### Many held locks"
out ""
out "| backend | held locks | server requests/s | server CPU ms/s | elect PSS per job, MiB | \`elect status\` (all locks), ms |"
out "|---|---:|---:|---:|---:|---:|"
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  [ "$kind" = file ] && continue
  python3 "$root/scripts/bench/scale.py" held --elect "$elect" --label "$label" --backend "$url" \
    --kind "$kind" --counts "$scale_counts" --window "$scale_window" \
    ${port:+--port "$port"} ${pid:+--server-pid "$pid"} | emit
done
out ""
out "N elects at once, each holding its own lock (default ttl 15 s, so one renew every 5 s each) and supervising \`sleep\`. Over ${scale_window} s once every job runs: the server's requests (counted as in section 6) and CPU time; the proportional set size (PSS: shared pages divided among their sharers) of elect and its watchdog, summed and divided by N; the wall time of one \`elect status\` listing every lock (median of 3)."
out ""
out "### Many waiters"
out ""
out "| backend | N waiting | server requests/s while waiting | server CPU ms/s | waiters' CPU ms/s | jobs started ≤ 1 s after a release (target 1) | server requests in that second, above the waiting rate | first job start after release, ms |"
out "|---|---:|---:|---:|---:|---|---:|---:|"
for b in "${backends[@]}"; do
  IFS='|' read -r label url kind port pid <<<"$b"
  [ "$kind" = file ] && continue
  "${measure[@]}" contention --elect "$elect" --label "$label" --backend "$url" --kind "$kind" \
    --n "$scale_waiters" --window "$scale_window" ${port:+--port "$port"} ${pid:+--server-pid "$pid"} | emit
done
out ""
out "As section 6, with ${scale_waiters} waiters."
out ""
