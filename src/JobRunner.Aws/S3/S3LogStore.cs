using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;

namespace JobRunner.Aws.S3;

/// <summary>
/// Job logs in S3: every append writes one chunk object <c>{prefix}logs/{job}/{first:D12}.{count}.{attempt}.{fence}.json</c>
/// holding the lines with their job-wide offsets. Keys sort by offset, so a page is read by listing the job's chunks and
/// fetching only those that overlap it. A writer learns the next offset from the listing when its lease (fence) is new
/// to this host, then counts on; if a stale writer's chunk overlaps a newer one, readers keep the newer fence's lines.
/// </summary>
internal sealed class S3LogStore : ILogStore, IDisposable
{
    private readonly S3Bucket _bucket;
    private readonly int _maxWriters;
    private readonly ConcurrentDictionary<JobId, Writer> _writers = new();

    public S3LogStore(S3Bucket bucket, int maxWriters = 10_000)
    {
        _bucket = bucket;
        _maxWriters = maxWriters;
    }

    internal S3Bucket Bucket => _bucket;

    public async ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, IReadOnlyList<LogLine> lines, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(lines);
        if (lines.Count == 0)
        {
            return [];
        }

        if (_writers.Count > _maxWriters)
        {
            EvictIdleWriters();
        }

        var writer = AcquireWriter(lease.JobId);
        try
        {
            await writer.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            writer.Release();
            throw;
        }

        try
        {
            if (writer.Fence != lease.FenceToken || writer.Next is null)
            {
                writer.Next = await EndOfLogAsync(lease.JobId, cancellationToken).ConfigureAwait(false);
                writer.Fence = lease.FenceToken;
            }

            var first = writer.Next.Value;
            var entries = new LogEntry[lines.Count];
            for (var i = 0; i < lines.Count; i++)
            {
                var line = lines[i];
                entries[i] = new LogEntry(first + i, lease.Attempt, line.Timestamp, line.Stream, line.Message);
            }

            var key = string.Create(CultureInfo.InvariantCulture, $"{JobPrefix(lease.JobId)}{first:D12}.{lines.Count}.{lease.Attempt}.{lease.FenceToken}.json");
            await _bucket.PutAsync(key, Encode(entries), cancellationToken).ConfigureAwait(false);
            writer.Next = first + lines.Count;
            return entries;
        }
        finally
        {
            writer.Gate.Release();
            writer.Release();
        }
    }

    /// <summary>The job's writer, counted as in use until <see cref="Writer.Release"/>, so that it is not evicted meanwhile.</summary>
    private Writer AcquireWriter(JobId jobId)
    {
        while (true)
        {
            var writer = _writers.GetOrAdd(jobId, static _ => new Writer());
            if (writer.TryAcquire())
            {
                return writer;
            }

            // Evicted between the lookup and the acquire: it is gone from the map (or about to be), so take a new one.
            _writers.TryRemove(new KeyValuePair<JobId, Writer>(jobId, writer));
        }
    }

    /// <summary>
    /// Forgets the writers no append is using (their next append reads the end of the log from the listing again). A
    /// writer in use stays: a second writer for the same job would count from the same offset and overwrite its chunk.
    /// </summary>
    private void EvictIdleWriters()
    {
        foreach (var (jobId, writer) in _writers)
        {
            if (writer.TryEvict())
            {
                _writers.TryRemove(new KeyValuePair<JobId, Writer>(jobId, writer));
            }
        }
    }

    public async ValueTask<LogPage> ReadAsync(JobId jobId, LogQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Offset, 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(query.Limit, 10_000);

        var chunks = await ListChunksAsync(jobId, cancellationToken).ConfigureAwait(false);
        var end = chunks.Count == 0 ? 0 : chunks.Max(static c => c.First + c.Count);
        var result = new List<LogEntry>(Math.Min(query.Limit, 1024));
        var next = Math.Max(query.Offset, end);
        var covered = query.Offset;
        foreach (var chunk in chunks)
        {
            if (chunk.First + chunk.Count <= covered || (query.Attempt is { } attempt && chunk.Attempt != attempt && !Overlapped(chunks, chunk)))
            {
                continue;
            }

            var body = await _bucket.GetAsync(chunk.Key, cancellationToken).ConfigureAwait(false);
            if (body is null)
            {
                continue;
            }

            foreach (var entry in Decode(body))
            {
                if (entry.Offset < covered || IsShadowed(chunks, chunk, entry.Offset))
                {
                    continue;
                }

                if ((query.Attempt is { } a && entry.Attempt != a) || (query.Since is { } since && entry.Timestamp < since))
                {
                    covered = entry.Offset + 1;
                    continue;
                }

                if (result.Count == query.Limit)
                {
                    return new LogPage(result, entry.Offset, 0);
                }

                result.Add(entry);
                covered = entry.Offset + 1;
            }
        }

        return new LogPage(result, next, 0);
    }

    public void Dispose() => _bucket.Dispose();

    private string JobPrefix(JobId jobId) => _bucket.Prefix + "logs/" + jobId.ToString() + "/";

    private async Task<long> EndOfLogAsync(JobId jobId, CancellationToken cancellationToken)
    {
        var chunks = await ListChunksAsync(jobId, cancellationToken).ConfigureAwait(false);
        var end = 0L;
        foreach (var chunk in chunks)
        {
            end = Math.Max(end, chunk.First + chunk.Count);
        }

        return end;
    }

    private async Task<List<Chunk>> ListChunksAsync(JobId jobId, CancellationToken cancellationToken)
    {
        var prefix = JobPrefix(jobId);
        var keys = await _bucket.ListAsync(prefix, startAfter: null, cancellationToken).ConfigureAwait(false);
        var chunks = new List<Chunk>(keys.Count);
        foreach (var key in keys)
        {
            var parts = key.AsSpan(prefix.Length).ToString().Split('.');
            if (parts.Length == 5 && parts[4] == "json"
                && long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var first)
                && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var count)
                && int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var attempt)
                && long.TryParse(parts[3], NumberStyles.None, CultureInfo.InvariantCulture, out var fence))
            {
                chunks.Add(new Chunk(key, first, count, attempt, fence));
            }
        }

        chunks.Sort(static (a, b) => a.First != b.First ? a.First.CompareTo(b.First) : b.Fence.CompareTo(a.Fence));
        return chunks;
    }

    /// <summary>Whether a chunk of a newer fence also holds <paramref name="offset"/> (a stale writer's overlap).</summary>
    private static bool IsShadowed(List<Chunk> chunks, Chunk chunk, long offset)
    {
        foreach (var other in chunks)
        {
            if (other.Fence > chunk.Fence && other.First <= offset && offset < other.First + other.Count)
            {
                return true;
            }
        }

        return false;
    }

    private static bool Overlapped(List<Chunk> chunks, Chunk chunk)
    {
        foreach (var other in chunks)
        {
            if (!ReferenceEquals(other, chunk) && other.First < chunk.First + chunk.Count && chunk.First < other.First + other.Count)
            {
                return true;
            }
        }

        return false;
    }

    private static byte[] Encode(LogEntry[] entries)
    {
        using var stream = new MemoryStream(64 * entries.Length);
        using (var writer = new Utf8JsonWriter(stream))
        {
            writer.WriteStartArray();
            foreach (var e in entries)
            {
                writer.WriteStartObject();
                writer.WriteNumber("o", e.Offset);
                writer.WriteNumber("a", e.Attempt);
                writer.WriteString("t", e.Timestamp);
                writer.WriteNumber("s", (int)e.Stream);
                writer.WriteString("m", e.Message);
                writer.WriteEndObject();
            }

            writer.WriteEndArray();
        }

        return stream.ToArray();
    }

    private static List<LogEntry> Decode(byte[] body)
    {
        using var doc = JsonDocument.Parse(body);
        var entries = new List<LogEntry>(doc.RootElement.GetArrayLength());
        foreach (var e in doc.RootElement.EnumerateArray())
        {
            entries.Add(new LogEntry(
                e.GetProperty("o").GetInt64(),
                e.GetProperty("a").GetInt32(),
                e.GetProperty("t").GetDateTimeOffset(),
                (LogStream)e.GetProperty("s").GetInt32(),
                e.GetProperty("m").GetString() ?? ""));
        }

        return entries;
    }

    private sealed record Chunk(string Key, long First, int Count, int Attempt, long Fence);

    private sealed class Writer
    {
        // How many appends use the writer (waiting for or holding the gate); -1 once evicted, after which no one may use it.
        private int _users;

        public SemaphoreSlim Gate { get; } = new(1, 1);

        public long Fence { get; set; } = -1;

        public long? Next { get; set; }

        public bool TryAcquire()
        {
            while (true)
            {
                var users = Volatile.Read(ref _users);
                if (users < 0)
                {
                    return false;
                }

                if (Interlocked.CompareExchange(ref _users, users + 1, users) == users)
                {
                    return true;
                }
            }
        }

        public void Release() => Interlocked.Decrement(ref _users);

        public bool TryEvict() => Interlocked.CompareExchange(ref _users, -1, 0) == 0;
    }
}
