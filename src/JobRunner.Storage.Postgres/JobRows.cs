using System.Buffers;
using System.Text;
using System.Text.Json;
using Npgsql;

namespace JobRunner.Storage.Postgres;

/// <summary>Maps rows of the jobs table to <see cref="JobRecord"/>s, and job fields to column values.</summary>
internal static class JobRows
{
    /// <summary>The columns <see cref="Read"/> expects, in order.</summary>
    public const string Columns =
        "id, tenant, workload, priority, concurrency_key, dedupe_key, correlation_id, parent_id, labels, input, not_before, timeout_ms, retry, " +
        "state, ready_at, created_at, updated_at, fence, attempts, checkpoint, progress_fraction, progress_message, cancel_requested, cancel_reason, last_error, seq, affinity";

    /// <summary>The number of <see cref="Columns"/>; a statement may select more after them.</summary>
    public const int ColumnCount = 27;

    public const string QueueColumns = "id, priority, tenant, workload, concurrency_key, enqueued_at, affinity";

    /// <summary>Reads the job of the current row.</summary>
    /// <exception cref="InvalidDataException">The row cannot be read (written by another version or changed by hand);
    /// whatever failed inside (a JSON value of the wrong kind, a null where a value belongs, ...) is its inner exception.</exception>
    public static JobRecord Read(NpgsqlDataReader row)
    {
        try
        {
            return ReadUnchecked(row);
        }
        catch (Exception e) when (e is not (InvalidDataException or OutOfMemoryException))
        {
            throw new InvalidDataException(e.Message, e);
        }
    }

    private static JobRecord ReadUnchecked(NpgsqlDataReader row)
    {
        var labels = row.IsDBNull(8) ? null : ReadLabels(row.GetString(8));
        var request = new JobRequest(row.GetString(2))
        {
            Input = row.GetFieldValue<byte[]>(9),
            Tenant = row.GetString(1),
            Priority = row.GetInt16(3),
            ConcurrencyKey = NullableString(row, 4),
            DedupeKey = NullableString(row, 5),
            CorrelationId = NullableString(row, 6),
            ParentId = row.IsDBNull(7) ? null : new JobId(row.GetGuid(7)),
            NotBefore = row.IsDBNull(10) ? null : row.GetFieldValue<DateTimeOffset>(10),
            Timeout = row.IsDBNull(11) ? null : TimeSpan.FromMilliseconds(row.GetInt64(11)),
            Retry = row.IsDBNull(12) ? null : ReadRetry(row.GetString(12)),
            Affinity = NullableString(row, 26),
        };
        if (labels is not null)
        {
            request = request with { Labels = labels };
        }

        var state = (JobState)row.GetInt16(13);
        if (!Enum.IsDefined(state))
        {
            throw new InvalidDataException($"Unknown state {(int)state}.");
        }

        return new JobRecord
        {
            Id = new JobId(row.GetGuid(0)),
            Request = request,
            State = state,
            DueAt = state == JobState.Scheduled ? row.GetFieldValue<DateTimeOffset>(14) : null,
            CreatedAt = row.GetFieldValue<DateTimeOffset>(15),
            UpdatedAt = row.GetFieldValue<DateTimeOffset>(16),
            FenceToken = row.GetInt64(17),
            Attempts = ReadAttempts(row.GetString(18)),
            Checkpoint = row.IsDBNull(19) ? (ReadOnlyMemory<byte>?)null : row.GetFieldValue<byte[]>(19),
            Progress = row.IsDBNull(20) && row.IsDBNull(21)
                ? null
                : new JobProgress(row.IsDBNull(20) ? null : row.GetDouble(20), NullableString(row, 21)),
            CancelRequested = row.GetBoolean(22),
            CancelReason = NullableString(row, 23),
            LastError = NullableString(row, 24),
        };
    }

    /// <summary>
    /// The first command of a batch whose hot statement looks jobs up by id or walks <c>jobs_ready_tenant</c> in order
    /// (dequeue, lease, completion; the dequeue function's statements are planned under these settings too, at their first
    /// run on a connection, and keep those plans). Without fresh statistics (a burst into a new or idle table: autovacuum analyzes a minute later
    /// at best, and a queue's state mix changes faster than that) the planner estimates a handful of ready or running
    /// rows and reads all of them with a bitmap scan, then sorts them or hash-joins them with the batch: every batch
    /// then costs as much as the whole queue. Local to the batch's implicit transaction, these settings leave it the
    /// index paths, whose cost follows the batch.
    /// </summary>
    /// <param name="commit">How durably the batch commits; by default as the connection says.</param>
    public static NpgsqlBatchCommand IndexPathsOnly(CommitMode commit = CommitMode.Connection)
    {
        const string Plans = "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_hashjoin', 'off', true), set_config('enable_seqscan', 'off', true)";
        return new(commit switch
        {
            CommitMode.Durable => Plans + ", set_config('synchronous_commit', CASE current_setting('synchronous_commit') WHEN 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, true)",
            CommitMode.Relaxed => Plans + ", set_config('synchronous_commit', 'off', true)",
            _ => Plans,
        });
    }

    public static long ReadSequence(NpgsqlDataReader row) => row.GetInt64(25);

    public static QueuedJob ReadQueued(NpgsqlDataReader row) => new()
    {
        Id = new JobId(row.GetGuid(0)),
        Priority = row.GetInt16(1),
        Tenant = row.GetString(2),
        Workload = row.GetString(3),
        ConcurrencyKey = NullableString(row, 4),
        EnqueuedAt = row.GetFieldValue<DateTimeOffset>(5),
        Affinity = NullableString(row, 6),
    };

    /// <summary>
    /// Free text (an error message, a cancellation reason, a progress message, a log line) as PostgreSQL text can hold
    /// it: text cannot hold NUL, and an unpaired surrogate has no UTF-8 form, so each becomes U+FFFD. Without this one
    /// such character would fail the whole batched statement, and with it every other job's write in the batch.
    /// </summary>
    /// <param name="value">The text.</param>
    /// <returns>The text, or a cleaned copy.</returns>
    [return: System.Diagnostics.CodeAnalysis.NotNullIfNotNull(nameof(value))]
    public static string? Text(string? value)
    {
        var first = value is null ? -1 : StorableText.IndexOfUnstorable(value);
        if (first < 0)
        {
            return value;
        }

        var text = value!.ToCharArray();
        for (var i = first; i >= 0;)
        {
            text[i] = '\uFFFD';
            var next = StorableText.IndexOfUnstorable(text.AsSpan(i + 1));
            i = next < 0 ? -1 : i + 1 + next;
        }

        return new string(text);
    }

    /// <summary>Microseconds since the Unix epoch: how attempts store their times.</summary>
    public static long ToMicros(DateTimeOffset time) => (time.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / 10;

    public static string? WriteLabels(IReadOnlyDictionary<string, string> labels)
    {
        if (labels.Count == 0)
        {
            return null;
        }

        var buffer = new ArrayBufferWriter<byte>(64);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            foreach (var (key, value) in labels)
            {
                writer.WriteString(key, value);
            }

            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    public static string? WriteRetry(RetryPolicy? retry)
    {
        if (retry is null)
        {
            return null;
        }

        var buffer = new ArrayBufferWriter<byte>(64);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("b", retry.Backoff.ToString());
            writer.WriteNumber("m", retry.MaxAttempts);
            writer.WriteNumber("d", retry.BaseDelay.Ticks);
            writer.WriteNumber("x", retry.MaxDelay.Ticks);
            writer.WriteBoolean("j", retry.UseJitter);
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    public static RetryPolicy ReadRetry(string json)
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        var kind = root.GetProperty("b").GetString();
        var max = root.GetProperty("m").GetInt32();
        var delay = TimeSpan.FromTicks(root.GetProperty("d").GetInt64());
        var maxDelay = TimeSpan.FromTicks(root.GetProperty("x").GetInt64());
        return kind switch
        {
            nameof(BackoffKind.None) => RetryPolicy.None,
            nameof(BackoffKind.Fixed) => RetryPolicy.Fixed(delay, max),
            nameof(BackoffKind.Linear) => RetryPolicy.Linear(delay, max, maxDelay),
            nameof(BackoffKind.Exponential) => RetryPolicy.Exponential(delay, max, maxDelay, root.GetProperty("j").GetBoolean()),
            _ => throw new InvalidDataException($"Unknown retry backoff '{kind}'."),
        };
    }

    private static Dictionary<string, string> ReadLabels(string json)
    {
        using var document = JsonDocument.Parse(json);
        var labels = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var property in document.RootElement.EnumerateObject())
        {
            labels[property.Name] = property.Value.GetString() ?? "";
        }

        return labels;
    }

    private static JobAttempt[] ReadAttempts(string json)
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        var attempts = new JobAttempt[root.GetArrayLength()];
        var i = 0;
        foreach (var a in root.EnumerateArray())
        {
            attempts[i++] = new JobAttempt
            {
                Number = a.GetProperty("n").GetInt32(),
                WorkerId = a.GetProperty("w").GetString() ?? "",
                FenceToken = a.GetProperty("f").GetInt64(),
                StartedAt = FromMicros(a.GetProperty("s").GetInt64()),
                EndedAt = a.TryGetProperty("e", out var e) ? FromMicros(e.GetInt64()) : null,
                Outcome = a.TryGetProperty("o", out var o) ? (AttemptOutcome)o.GetInt32() : null,
                Error = a.TryGetProperty("err", out var err) ? err.GetString() : null,
                ErrorType = a.TryGetProperty("et", out var et) ? et.GetString() : null,
                ExitCode = a.TryGetProperty("x", out var x) ? x.GetInt32() : null,
            };
        }

        return attempts;
    }

    public static DateTimeOffset FromMicros(long micros) => DateTimeOffset.UnixEpoch.AddTicks(micros * 10);

    private static string? NullableString(NpgsqlDataReader row, int ordinal) => row.IsDBNull(ordinal) ? null : row.GetString(ordinal);
}

/// <summary>How durably a batch commits, whatever the connection's <c>synchronous_commit</c>.</summary>
internal enum CommitMode
{
    /// <summary>As the connection says (<see cref="PostgresOptions.SynchronousCommitForWorkers"/>).</summary>
    Connection,

    /// <summary>
    /// At least flushed to the WAL (<c>off</c> is raised to <c>on</c>; a stricter setting is kept): the leases. A fence
    /// token comes from a sequence, and a sequence's advance is only as durable as the WAL after it; a lease batch
    /// committed asynchronously and lost in a server crash could let the sequence hand out the same token again after
    /// the restart, to another lease of the same job, while the first worker still runs with it. A flushed lease commit
    /// flushes the sequence's advance too, so no granted token is ever granted twice.
    /// </summary>
    Durable,

    /// <summary>
    /// Without waiting for the WAL flush: the dequeue, whose only write is the queue's visibility hint (<c>taken_until</c>).
    /// Lost in a server crash, the jobs are only dequeued again; the lease that follows is what keeps a job to one worker.
    /// Saves a flush on the path from enqueue to start.
    /// </summary>
    Relaxed,
}
