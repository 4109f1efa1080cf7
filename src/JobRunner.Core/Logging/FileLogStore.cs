using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;

namespace JobRunner.Logging;

/// <summary>
/// Job logs on disk: one append-only file per job and attempt, <c>{directory}/{jobId}/attempt-{n}.log</c>, one line per
/// entry: <c>offset TAB timestamp TAB stream TAB message</c> (backslash, CR and LF escaped). Offsets run across the
/// attempts of a job. Everything needed to read survives a host restart: the next offset is recovered from the files.
/// A line counts once its LF is written: readers leave out a last line without one (being written now, or torn by a
/// crash), and the first append of a job in a process (or after a failed write) cuts such a tail off before writing.
/// </summary>
internal sealed class FileLogStore : ILogStore
{
    private readonly string _directory;
    private readonly int _maxCachedJobs;
    private readonly ConcurrentDictionary<JobId, JobFiles> _jobs = new();
    private long _uses;

    public FileLogStore(string directory)
        : this(directory, maxCachedJobs: 1024)
    {
    }

    /// <param name="directory">The directory of the logs.</param>
    /// <param name="maxCachedJobs">How many jobs' next offsets are kept in memory; past twice as many, the least recently used are dropped (read from the files again at their next append).</param>
    internal FileLogStore(string directory, int maxCachedJobs)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCachedJobs, 1);
        _directory = Path.GetFullPath(directory);
        _maxCachedJobs = maxCachedJobs;
        Directory.CreateDirectory(_directory);
    }

    /// <summary>Gets how many jobs' next offsets are in memory; for tests.</summary>
    internal int CachedJobs => _jobs.Count;

    /// <summary>Gets whether <paramref name="jobId"/>'s next offset is in memory; for tests.</summary>
    internal bool IsCached(JobId jobId) => _jobs.ContainsKey(jobId);

    public async ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, IReadOnlyList<LogLine> lines, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(lines);
        JobFiles files;
        while (true)
        {
            files = _jobs.GetOrAdd(lease.JobId, static (id, self) => new JobFiles(Path.Combine(self._directory, id.ToString())), this);
            await files.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
            if (!files.Retired)
            {
                files.LastUse = Interlocked.Increment(ref _uses);
                break;
            }

            // Dropped from the cache while this call waited: take the job's new entry.
            files.Lock.Release();
        }

        try
        {
            files.NextOffset ??= await RecoverAsync(files.Directory, cancellationToken).ConfigureAwait(false);
            Directory.CreateDirectory(files.Directory);
            var entries = new LogEntry[lines.Count];
            var text = new StringBuilder(lines.Count * 64);
            for (var i = 0; i < lines.Count; i++)
            {
                var line = lines[i];
                var entry = new LogEntry(files.NextOffset.Value + i, lease.Attempt, line.Timestamp, line.Stream, line.Message);
                entries[i] = entry;
                Format(text, entry);
            }

            try
            {
                var stream = new FileStream(AttemptPath(files.Directory, lease.Attempt), FileMode.Append, FileAccess.Write, FileShare.Read, bufferSize: 1 << 16, useAsync: true);
                await using (stream.ConfigureAwait(false))
                {
                    var bytes = Encoding.UTF8.GetBytes(text.ToString());
                    await stream.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
                }
            }
            catch
            {
                // Part of the text may be on disk: the next append reads the files again and cuts it off.
                files.NextOffset = null;
                throw;
            }

            files.NextOffset += lines.Count;
            return entries;
        }
        finally
        {
            files.Lock.Release();
            if (_jobs.Count > 2 * _maxCachedJobs)
            {
                Trim();
            }
        }
    }

    /// <summary>Drops the least recently used entries that nobody holds now, until at most the cap is left.</summary>
    private void Trim()
    {
        // Sorted by a snapshot of the last uses: appends go on raising them meanwhile.
        var entries = _jobs.Select(static e => (e.Value.LastUse, e.Key, e.Value)).ToArray();
        Array.Sort(entries, static (a, b) => a.LastUse.CompareTo(b.LastUse));
        foreach (var (_, id, files) in entries)
        {
            if (_jobs.Count <= _maxCachedJobs)
            {
                return;
            }

            if (files.Lock.Wait(0))
            {
                files.Retired = true;
                _jobs.TryRemove(KeyValuePair.Create(id, files));
                files.Lock.Release();
            }
        }
    }

    public async ValueTask<LogPage> ReadAsync(JobId jobId, LogQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Offset, 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(query.Limit, 10_000);
        var directory = Path.Combine(_directory, jobId.ToString());
        var result = new List<LogEntry>();
        var next = query.Offset;
        foreach (var (attempt, path) in AttemptFiles(directory))
        {
            if (query.Attempt is { } wanted && wanted != attempt)
            {
                continue;
            }

            await foreach (var (line, _) in ReadLinesAsync(path, cancellationToken).ConfigureAwait(false))
            {
                // Lines before the page are skipped by their offset alone, not parsed.
                if (!TryReadOffset(line, out var offset) || offset < query.Offset || Parse(line, offset, attempt) is not { } entry)
                {
                    continue;
                }

                if (query.Since is { } since && entry.Timestamp < since)
                {
                    next = entry.Offset + 1;
                    continue;
                }

                if (result.Count == query.Limit)
                {
                    return new LogPage(result, entry.Offset, 0);
                }

                result.Add(entry);
                next = entry.Offset + 1;
            }
        }

        return new LogPage(result, next, 0);
    }

    private static string AttemptPath(string directory, int attempt) => Path.Combine(directory, $"attempt-{attempt}.log");

    private static IEnumerable<(int Attempt, string Path)> AttemptFiles(string directory)
    {
        if (!Directory.Exists(directory))
        {
            return [];
        }

        return Directory.EnumerateFiles(directory, "attempt-*.log")
            .Select(path => (Attempt: int.TryParse(Path.GetFileNameWithoutExtension(path)["attempt-".Length..], NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : -1, Path: path))
            .Where(static x => x.Attempt > 0)
            .OrderBy(static x => x.Attempt);
    }

    /// <summary>
    /// Finds the job's next offset (after the highest of its complete lines) and cuts off every file's torn last line, so
    /// that the next line written starts a line of its own.
    /// </summary>
    private static async Task<long> RecoverAsync(string directory, CancellationToken cancellationToken)
    {
        long next = 0;
        foreach (var (attempt, path) in AttemptFiles(directory))
        {
            long end = 0;
            await foreach (var (line, lineEnd) in ReadLinesAsync(path, cancellationToken).ConfigureAwait(false))
            {
                end = lineEnd;
                if (TryReadOffset(line, out var offset) && Parse(line, offset, attempt) is not null)
                {
                    next = Math.Max(next, offset + 1);
                }
            }

            if (new FileInfo(path).Length > end)
            {
                using var file = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.Read);
                file.SetLength(end);
            }
        }

        return next;
    }

    /// <summary>
    /// Reads the complete lines of a file, each with the file position after its LF. What follows the last LF is being
    /// written now, or was torn by a crash: it is left out.
    /// </summary>
    private static async IAsyncEnumerable<(string Line, long End)> ReadLinesAsync(string path, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 1, useAsync: true);
        await using (stream.ConfigureAwait(false))
        {
            var buffer = new byte[1 << 16];
            int start = 0, end = 0;
            long position = 0; // of buffer[0] in the file
            while (true)
            {
                if (end == buffer.Length)
                {
                    if (start > 0)
                    {
                        Buffer.BlockCopy(buffer, start, buffer, 0, end - start);
                        position += start;
                        end -= start;
                        start = 0;
                    }
                    else
                    {
                        Array.Resize(ref buffer, buffer.Length * 2);
                    }
                }

                var read = await stream.ReadAsync(buffer.AsMemory(end), cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    yield break;
                }

                var scan = end;
                end += read;
                for (int lf; (lf = Array.IndexOf(buffer, (byte)'\n', scan, end - scan)) >= 0; scan = start)
                {
                    yield return (Encoding.UTF8.GetString(buffer, start, lf - start), position + lf + 1);
                    start = lf + 1;
                }
            }
        }
    }

    private static void Format(StringBuilder text, LogEntry entry)
    {
        text.Append(entry.Offset.ToString(CultureInfo.InvariantCulture)).Append('\t')
            .Append(entry.Timestamp.UtcDateTime.ToString("O", CultureInfo.InvariantCulture)).Append('\t')
            .Append(entry.Stream switch { LogStream.Error => "stderr", LogStream.System => "system", _ => "stdout" }).Append('\t');
        foreach (var c in entry.Message)
        {
            _ = c switch
            {
                '\\' => text.Append("\\\\"),
                '\n' => text.Append("\\n"),
                '\r' => text.Append("\\r"),
                _ => text.Append(c),
            };
        }

        text.Append('\n');
    }

    private static bool TryReadOffset(string line, out long offset)
    {
        var tab = line.IndexOf('\t', StringComparison.Ordinal);
        return long.TryParse(tab < 0 ? line : line.AsSpan(0, tab), NumberStyles.None, CultureInfo.InvariantCulture, out offset);
    }

    /// <summary>Parses a line whose offset <see cref="TryReadOffset"/> has read.</summary>
    private static LogEntry? Parse(string line, long offset, int attempt)
    {
        var parts = line.Split('\t', 4);
        if (parts.Length != 4
            || !DateTimeOffset.TryParse(parts[1], CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var timestamp))
        {
            return null;
        }

        var stream = parts[2] switch { "stderr" => LogStream.Error, "system" => LogStream.System, _ => LogStream.Output };
        return new LogEntry(offset, attempt, timestamp, stream, Unescape(parts[3]));
    }

    private static string Unescape(string text)
    {
        if (!text.Contains('\\', StringComparison.Ordinal))
        {
            return text;
        }

        var sb = new StringBuilder(text.Length);
        for (var i = 0; i < text.Length; i++)
        {
            if (text[i] == '\\' && i + 1 < text.Length)
            {
                i++;
                sb.Append(text[i] switch { 'n' => '\n', 'r' => '\r', _ => text[i] });
            }
            else
            {
                sb.Append(text[i]);
            }
        }

        return sb.ToString();
    }

    private sealed class JobFiles(string directory)
    {
        public string Directory { get; } = directory;

        public SemaphoreSlim Lock { get; } = new(1, 1);

        public long? NextOffset { get; set; }

        /// <summary>Gets or sets when the entry was last used, in appends of the store.</summary>
        public long LastUse { get; set; }

        /// <summary>Gets or sets whether the entry was dropped from the cache (set under <see cref="Lock"/>).</summary>
        public bool Retired { get; set; }
    }
}
