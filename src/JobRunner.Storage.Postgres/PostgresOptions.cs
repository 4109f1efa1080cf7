namespace JobRunner.Storage.Postgres;

/// <summary>Settings of the PostgreSQL store and queue. Checked when the host starts.</summary>
public sealed class PostgresOptions
{
    /// <summary>Gets or sets the Npgsql connection string. Required.</summary>
    public string ConnectionString { get; set; } = "";

    /// <summary>Gets or sets the schema that holds JobRunner's tables (created by the migrations). Default "jobrunner".</summary>
    public string Schema { get; set; } = "jobrunner";

    /// <summary>Gets or sets whether the migrations shipped in the package are applied at start. Default <see langword="true"/>.</summary>
    public bool ApplyMigrations { get; set; } = true;

    /// <summary>
    /// Gets or sets whether the worker's writes (heartbeat, checkpoint, completion) wait for the WAL flush.
    /// Default <see langword="true"/>. Submissions and cancellations always do. With <see langword="false"/>, a crash
    /// of the database server (not of a worker) may forget the last few hundred milliseconds of worker writes: such
    /// jobs run again from their previous checkpoint (at-least-once is kept; no job is lost). Leases always commit
    /// synchronously, so that no fence token is granted twice across such a crash.
    /// </summary>
    public bool SynchronousCommitForWorkers { get; set; } = true;

    /// <summary>Gets or sets the server-side statement timeout. Default 30 seconds.</summary>
    public TimeSpan StatementTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets the server-side idle-in-transaction timeout. Default 60 seconds.</summary>
    public TimeSpan IdleInTransactionTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Gets or sets how often an idle worker looks for ready jobs when no wake-up arrives (wake-ups come by
    /// LISTEN/NOTIFY; polling is only the fallback). Default 5 seconds.
    /// </summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Gets or sets the most rows one batched statement writes (inserts, leases, completions). Default 500.</summary>
    public int MaxBatchSize { get; set; } = 500;

    /// <summary>
    /// Gets or sets how many batches of one kind of worker write (leases, completions) are written at once; a second
    /// and later batch starts only when a full batch (<see cref="MaxBatchSize"/>) waits. Default 1: on a small server
    /// more concurrent batches of these contend for the same rows and lose.
    /// </summary>
    public int MaxBatchesInFlight { get; set; } = 1;

    /// <summary>
    /// Gets or sets how many batches of inserts (submissions) are written at once; a second and later batch starts only
    /// when a full batch (<see cref="MaxBatchSize"/>) waits, as in a bulk submit. Default 2: new rows contend for
    /// nothing, so the second batch uses a second server core.
    /// </summary>
    public int InsertBatchesInFlight { get; set; } = 2;

    /// <summary>
    /// Gets or sets how many times a job's lease may expire (its worker died during the attempt) before the job is
    /// quarantined as <see cref="JobState.Failed"/>. Default 5.
    /// </summary>
    public int MaxLeaseExpirations { get; set; } = 5;

    /// <summary>Gets or sets whether every state transition is written to the history table. Default <see langword="true"/>.</summary>
    public bool WriteHistory { get; set; } = true;

    /// <summary>
    /// Gets or sets how often a host that has watchers of state changes (<see cref="IJobClient.WatchAsync(JobId, CancellationToken)"/>
    /// and filters that take <see cref="JobEventKind.StateChanged"/>) reads the transitions other hosts wrote to the
    /// history and publishes them on its own bus; a host without such watchers takes only the server's snapshot (one
    /// short query) at this interval. <see langword="null"/> keeps events on the host that made the change.
    /// Needs <see cref="WriteHistory"/>. Default 250 milliseconds.
    /// </summary>
    public TimeSpan? EventRelayInterval { get; set; } = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// Gets or sets whether each log append is followed by a NOTIFY (which lines, not the lines; sent in a transaction of
    /// its own, many at a time), so that hosts with log watchers read the lines back and publish them as
    /// <see cref="JobEventKind.Log"/> events. <see langword="false"/> keeps log events on the host that wrote them (any
    /// host still reads logs with <c>ReadLogsAsync</c>). Default <see langword="true"/>.
    /// </summary>
    public bool LogEventsAcrossHosts { get; set; } = true;

    /// <summary>Gets or sets how long history rows are kept. Default 7 days.</summary>
    public TimeSpan HistoryRetention { get; set; } = TimeSpan.FromDays(7);

    /// <summary>
    /// Gets or sets how long finished jobs (succeeded, failed, cancelled) are kept; <see langword="null"/> keeps them.
    /// Default 7 days.
    /// </summary>
    public TimeSpan? FinishedJobRetention { get; set; } = TimeSpan.FromDays(7);

    /// <summary>Gets or sets how often housekeeping runs (on one host at a time). Default 1 minute.</summary>
    public TimeSpan HousekeepingInterval { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>Gets or sets how many transient database errors an operation retries (with backoff). Default 5.</summary>
    public int MaxRetries { get; set; } = 5;
}
