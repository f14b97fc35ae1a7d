//! The man page sections that are not flags: exit status, environment, backends, examples.
//! In roff, appended after the sections generated from the clap definition.

pub const SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
\fIthe job's code\fR
The job exited by itself.
.TP
\fB128+N\fR
The job was killed by signal N (or elect was stopped by signal N while waiting; the job did not run).
.TP
\fB2\fR
Usage error: bad flag, duration, lock name, URL, inconsistent lease settings.
.TP
\fB3\fR
\fBelect status\fR: the lock is free.
.TP
\fB69\fR
The backend could not be reached or refused us (auth, TLS, permissions), before the job started.
.TP
\fB70\fR
elect itself failed (its watchdog process was killed).
.TP
\fB75\fR
The lock is held elsewhere (no wait, or the wait timed out); \fB\-\-conflict\-exit\-code\fR changes it.
.TP
\fB76\fR
The lease was lost while the job ran; the job was stopped.
.TP
\fB126\fR, \fB127\fR
The command is not executable, or not found.
.SH ENVIRONMENT
Every flag can also be set by its variable (the flag wins):
\fBELECT_BACKEND\fR, \fBELECT_BACKEND_FILE\fR, \fBELECT_LOCK\fR, \fBELECT_TTL\fR, \fBELECT_RENEW\fR,
\fBELECT_GRACE\fR, \fBELECT_WAIT\fR, \fBELECT_CONFLICT_EXIT_CODE\fR, \fBELECT_ID\fR, \fBELECT_ONCE_PER\fR,
\fBELECT_TLS_CA\fR, \fBELECT_TLS_CERT\fR, \fBELECT_TLS_KEY\fR, \fBELECT_LOG_FORMAT\fR.
.TP
\fBELECT_LOG\fR
A tracing filter for the log lines on stderr (\fBinfo\fR by default; \fB\-q\fR and \fB\-v\fR override it).
.TP
\fBELECT_LOCK_DIR\fR
The file backend's directory when no URL is given.
.PP
The job gets \fBELECT_LOCK\fR, \fBELECT_FENCING_TOKEN\fR (grows on every acquisition of the lock),
\fBELECT_HOLDER_ID\fR and \fBELECT_BACKEND\fR (credentials redacted).
.SH "THE LEASE RULE"
The holder owns the lease until D = s + ttl \- margin, where s is the time the last successful
acquire or renew was sent and margin = max(250ms, ttl/50). Without a successful renew the job gets
SIGTERM at D \- grace and SIGKILL at D, from a watchdog process that works even while elect is
stopped. The settings must satisfy renew + grace + margin < ttl.
.SH "ONCE PER WINDOW AND RUN HISTORY"
Every release records the last run of the lock (holder, host, pid, token, start, end, duration,
exit code or signal); \fBelect status\fR shows it in its LAST RUN column and as \fBlast_run\fR in
JSON. A lease that was lost records nothing.
With \fB\-\-once\-per\fR DURATION, a run that exits 0 leaves a marker that expires after DURATION by
the backend's clock; a contender that takes the lock while it lives releases it without running
the job and exits 75 (\fB\-\-conflict\-exit\-code\fR), saying when and where the job last ran.
A failed run leaves no marker.
.SH BACKENDS
.TP
\fBfile:///DIR\fR (default)
flock(2) on DIR/NAME.lock; the directory is \fBELECT_LOCK_DIR\fR, else /run/lock/elect for root
(owned by root, mode 0755) and /run/lock/elect\-UID for any other user (owned by that user, mode
0700), created so if missing. The default depends only on the effective uid, never on
XDG_RUNTIME_DIR, HOME or TMPDIR, and there is no fallback: a default directory that cannot be used
safely (another owner, a wrong mode, a symlink) is exit 69 naming it and the fix. An explicit
directory, and every directory and symlink on its path, must belong to root or you and be writable
by no one else, unless sticky (like /tmp) or setgid and group\-writable (shared with that group on
purpose: lock files are created 0660 for the group). A lock file must be a regular file with one
link, owned by you or root (or by the shared group) and not writable by others; anything else is
refused (exit 69) naming it and its owner. The fencing token is kept in the lock file and grows with
checked arithmetic. Lock files are never deleted. A holder whose lock file is deleted or replaced
learns it within 100 ms, stops the job and exits 76; a newcomer does not start while any
process still holds the flock of an earlier file of that path (found through /proc/locks and
/proc/PID/fd: all processes as root, only your own otherwise; skipped for a file whose holder
record names this very file and that was not renamed or linked since): exit 75, or with
\fB\-\-wait\fR it waits. The kernel lock cannot expire while the job runs.
.TP
\fBredis://[USER:PASSWORD@]HOST[:PORT][/DB]\fR, \fBrediss://...\fR (TLS)
SET NX PX with a random secret, in one Lua script with the fencing-token INCR; token-checked renew
and release scripts; keys \fBelect:{NAME}\fR, \fBelect:{NAME}:token\fR, \fBelect:{NAME}:baton\fR
(one Redis Cluster slot per lock). Waiters queue on the baton list: a release wakes one.
Asynchronous replication: a failover to a replica that lacked the key can lose a lease;
\fB?wait=N\fR makes acquire and renew count only once N replicas acknowledged them (WAIT).
Password also from \fBELECT_REDIS_PASSWORD\fR.
.TP
\fBredis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]\fR
The primary that the sentinels name, found again after a failover; sentinels that do not answer
are skipped. The sentinels' own login: \fB?sentinel_user=\fR, \fB?sentinel_password=\fR or
\fBELECT_REDIS_SENTINEL_PASSWORD\fR. \fBrediss+sentinel://\fR for TLS.
.TP
\fBredis+cluster://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]\fR
A Redis Cluster through its seed nodes: redirections followed, \fBstatus\fR reads every primary.
\fBrediss+cluster://\fR for TLS.
.TP
\fBetcd://HOST:PORT[,HOST:PORT...][?prefix=P]\fR, \fBetcds://...\fR (TLS)
An etcd lease kept alive while the job runs, and the key layout of etcd's concurrency mutex
(P/NAME/LEASE-ID), so that \fBetcdctl lock\fR P/NAME and elect exclude each other. The fencing token
is the key's create revision. Waiters watch the key just ahead of them: first come, first served.
User and password also from \fBELECT_ETCD_USER\fR and \fBELECT_ETCD_PASSWORD\fR.
.TP
\fBpostgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=...]\fR, \fBpostgresql://...\fR
A row per lock in the table \fBelect_leases\fR (created if missing); acquire, renew and release are
single statements judged by the server's \fBclock_timestamp()\fR; NOTIFY wakes waiters. Works
through PgBouncer in transaction mode; a standby is refused. Password also from \fBPGPASSWORD\fR
or ~/.pgpass.
.TP
\fBzk://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/BASE]\fR
The layout of kazoo's Lock recipe: an ephemeral sequential node BASE/NAME/UUID__lock__SEQ per
contender (BASE defaults to /elect), so that a kazoo Lock on BASE/NAME and elect exclude each
other; the lowest holds, each waiter watches the one just ahead. The session is the lease: its
timeout is \fB\-\-ttl\fR (refused, exit 2, if the server grants less); an expired session is a
lost lease. The fencing token is the node's creation zxid. Digest credentials; password also from
\fBELECT_ZK_PASSWORD\fR.
.PP
Every URL elect prints or passes to the job has its password replaced by ***.
.SH "FORCED RELEASE"
\fBelect release \-\-lock NAME \-\-token N\fR frees a lock whose holder is known to be dead, only if
its fencing token is still N (exit 0 released, 3 free already, 75 held under another token).
.SH EXAMPLES
.TP
Run once across machines from cron, skipping quietly when another machine runs it:
\fBelect run \-\-lock billing \-\-conflict\-exit\-code 0 \-\- /opt/billing/run.sh\fR
.TP
Wait up to ten minutes for the lock:
\fBelect run \-\-lock migrate \-\-wait=10m \-\- ./migrate.sh\fR
.TP
A singleton service under systemd:
\fBExecStart=/usr/local/bin/elect run \-\-lock scheduler \-\-wait \-\- /usr/local/bin/scheduler\fR
.TP
Bill once a day, whichever machine's cron fires first:
\fBelect run \-\-lock billing \-\-once\-per 23h \-\-conflict\-exit\-code 0 \-\- /opt/billing/run.sh\fR
.TP
Who holds billing:
\fBelect status \-\-lock billing \-\-json\fR
"#;
