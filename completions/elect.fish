# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_elect_global_optspecs
    string join \n config= h/help V/version
end

function __fish_elect_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_elect_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_elect_using_subcommand
    set -l cmd (__fish_elect_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c elect -n "__fish_elect_needs_command" -l config -d 'Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf' -r -F
complete -c elect -n "__fish_elect_needs_command" -s h -l help -d 'Print help'
complete -c elect -n "__fish_elect_needs_command" -s V -l version -d 'Print version'
complete -c elect -n "__fish_elect_needs_command" -f -a "run" -d 'Take the lease, run COMMAND, release the lease when it exits'
complete -c elect -n "__fish_elect_needs_command" -f -a "status" -d 'Show who holds which lock (exit 0 held, 3 free, 69 backend unavailable)'
complete -c elect -n "__fish_elect_needs_command" -f -a "release" -d 'Free a lock whose holder is known dead, only if its fencing token is still N'
complete -c elect -n "__fish_elect_needs_command" -f -a "config" -d 'Show every setting, its value and where it came from (flag > environment > file > default)'
complete -c elect -n "__fish_elect_needs_command" -f -a "generate" -d 'Write the man page and shell completions under DIR (for packaging)'
complete -c elect -n "__fish_elect_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c elect -n "__fish_elect_using_subcommand run" -l lock -d 'Lease name: a letter or digit, then up to 127 of A-Z a-z 0-9 . _ -' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l ttl -d 'Lease time-to-live on the backend' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l renew -d 'How often the holder renews [default: ttl / 3]' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l grace -d 'SIGTERM-to-SIGKILL grace when the job must stop' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l wait -d 'Wait for the lock instead of exiting 75: for ever, or at most DURATION (--wait=30s)' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l conflict-exit-code -d 'Exit code when the lock is held elsewhere (0 makes a skip silent, for cron)' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l once-per -d 'After a successful run (exit 0), skip the job (exit 75) until DURATION has passed, by the backend\'s clock: once per window across every machine' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l holders -d 'At most N holders of the lock at once across every machine, each with its own fencing token (every contender of the lock must use the same N)' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l max-runtime -d 'Stop the job after DURATION (SIGTERM, SIGKILL after --grace) and exit 124' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l pid-namespace -d 'Run the job in a PID namespace of its own (root only), so that every process it starts, daemons included, dies with elect\'s watchdog; the job then sees its own pids only' -r -f -a "true\t''
false\t''"
complete -c elect -n "__fish_elect_using_subcommand run" -l on-acquired -d 'Run CMD (with sh -c) when the lease is taken' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l on-busy -d 'Run CMD when the run is skipped because the lock is held' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l on-lost -d 'Run CMD when the lease is lost while the job runs' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l hook-timeout -d 'How long a hook may run before it is killed' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l metrics-file -d 'Write Prometheus metrics of the run to PATH at exit (textfile collector)' -r -F
complete -c elect -n "__fish_elect_using_subcommand run" -l id -d 'Holder identity recorded with the lease [default: HOSTNAME:PID]' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l backend -d 'Where leases live: file:///DIR, redis://, rediss://, redis+sentinel://, redis+cluster://, etcd://, etcds://, postgres://, zk:// [default: the local lock directory]' -r
complete -c elect -n "__fish_elect_using_subcommand run" -l backend-file -d 'Read the backend URL from a file, so that secrets stay out of argv' -r -F
complete -c elect -n "__fish_elect_using_subcommand run" -l tls-ca -d 'CA certificate that verifies a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand run" -l tls-cert -d 'Client certificate for a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand run" -l tls-key -d 'Client key for a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand run" -l log-format -d 'Log line format on stderr' -r -f -a "text\t''
json\t''"
complete -c elect -n "__fish_elect_using_subcommand run" -l config -d 'Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf' -r -F
complete -c elect -n "__fish_elect_using_subcommand run" -s q -l quiet -d 'Only errors on stderr (ELECT_LOG takes a tracing filter instead)'
complete -c elect -n "__fish_elect_using_subcommand run" -s v -l verbose -d 'More detail on stderr: -v every lease event, -vv everything'
complete -c elect -n "__fish_elect_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c elect -n "__fish_elect_using_subcommand status" -l lock -d 'Show only this lock' -r
complete -c elect -n "__fish_elect_using_subcommand status" -l backend -d 'Where leases live: file:///DIR, redis://, rediss://, redis+sentinel://, redis+cluster://, etcd://, etcds://, postgres://, zk:// [default: the local lock directory]' -r
complete -c elect -n "__fish_elect_using_subcommand status" -l backend-file -d 'Read the backend URL from a file, so that secrets stay out of argv' -r -F
complete -c elect -n "__fish_elect_using_subcommand status" -l tls-ca -d 'CA certificate that verifies a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand status" -l tls-cert -d 'Client certificate for a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand status" -l tls-key -d 'Client key for a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand status" -l log-format -d 'Log line format on stderr' -r -f -a "text\t''
json\t''"
complete -c elect -n "__fish_elect_using_subcommand status" -l config -d 'Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf' -r -F
complete -c elect -n "__fish_elect_using_subcommand status" -l json -d 'Print JSON instead of a table'
complete -c elect -n "__fish_elect_using_subcommand status" -s q -l quiet -d 'Only errors on stderr (ELECT_LOG takes a tracing filter instead)'
complete -c elect -n "__fish_elect_using_subcommand status" -s v -l verbose -d 'More detail on stderr: -v every lease event, -vv everything'
complete -c elect -n "__fish_elect_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c elect -n "__fish_elect_using_subcommand release" -l lock -d 'The lock to free' -r
complete -c elect -n "__fish_elect_using_subcommand release" -l token -d 'Free it only if its holder\'s fencing token is N (see `elect status`)' -r
complete -c elect -n "__fish_elect_using_subcommand release" -l backend -d 'Where leases live: file:///DIR, redis://, rediss://, redis+sentinel://, redis+cluster://, etcd://, etcds://, postgres://, zk:// [default: the local lock directory]' -r
complete -c elect -n "__fish_elect_using_subcommand release" -l backend-file -d 'Read the backend URL from a file, so that secrets stay out of argv' -r -F
complete -c elect -n "__fish_elect_using_subcommand release" -l tls-ca -d 'CA certificate that verifies a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand release" -l tls-cert -d 'Client certificate for a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand release" -l tls-key -d 'Client key for a TLS backend' -r -F
complete -c elect -n "__fish_elect_using_subcommand release" -l log-format -d 'Log line format on stderr' -r -f -a "text\t''
json\t''"
complete -c elect -n "__fish_elect_using_subcommand release" -l config -d 'Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf' -r -F
complete -c elect -n "__fish_elect_using_subcommand release" -s q -l quiet -d 'Only errors on stderr (ELECT_LOG takes a tracing filter instead)'
complete -c elect -n "__fish_elect_using_subcommand release" -s v -l verbose -d 'More detail on stderr: -v every lease event, -vv everything'
complete -c elect -n "__fish_elect_using_subcommand release" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c elect -n "__fish_elect_using_subcommand config" -l config -d 'Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf' -r -F
complete -c elect -n "__fish_elect_using_subcommand config" -s h -l help -d 'Print help'
complete -c elect -n "__fish_elect_using_subcommand generate" -l config -d 'Read settings from this file instead of /etc/elect.conf and ~/.config/elect.conf' -r -F
complete -c elect -n "__fish_elect_using_subcommand generate" -s h -l help -d 'Print help'
complete -c elect -n "__fish_elect_using_subcommand help; and not __fish_seen_subcommand_from run status release config generate help" -f -a "run" -d 'Take the lease, run COMMAND, release the lease when it exits'
complete -c elect -n "__fish_elect_using_subcommand help; and not __fish_seen_subcommand_from run status release config generate help" -f -a "status" -d 'Show who holds which lock (exit 0 held, 3 free, 69 backend unavailable)'
complete -c elect -n "__fish_elect_using_subcommand help; and not __fish_seen_subcommand_from run status release config generate help" -f -a "release" -d 'Free a lock whose holder is known dead, only if its fencing token is still N'
complete -c elect -n "__fish_elect_using_subcommand help; and not __fish_seen_subcommand_from run status release config generate help" -f -a "config" -d 'Show every setting, its value and where it came from (flag > environment > file > default)'
complete -c elect -n "__fish_elect_using_subcommand help; and not __fish_seen_subcommand_from run status release config generate help" -f -a "generate" -d 'Write the man page and shell completions under DIR (for packaging)'
complete -c elect -n "__fish_elect_using_subcommand help; and not __fish_seen_subcommand_from run status release config generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
