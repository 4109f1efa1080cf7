using System.Collections.Concurrent;
using System.Globalization;
using System.Text;

namespace JobRunner.Logging;

/// <summary>
/// Job logs on disk: one append-only file per job and attempt, <c>{directory}/{jobId}/attempt-{n}.log</c>, one line per
/// entry: <c>offset TAB timestamp TAB stream TAB message</c> (backslash, CR and LF escaped). Offsets run across the
/// attempts of a job. Everything needed to read survives a host restart: the next offset is recovered from the files.
/// </summary>
internal sealed class FileLogStore : ILogStore
{
    private readonly string _directory;
    private readonly ConcurrentDictionary<JobId, JobFiles> _jobs = new();

    public FileLogStore(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        _directory = Path.GetFullPath(directory);
        Directory.CreateDirectory(_directory);
    }

    public async ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, IReadOnlyList<LogLine> lines, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(lines);
        var files = _jobs.GetOrAdd(lease.JobId, static (id, self) => new JobFiles(Path.Combine(self._directory, id.ToString())), this);
        await files.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            files.NextOffset ??= await RecoverNextOffsetAsync(files.Directory, cancellationToken).ConfigureAwait(false);
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

            var stream = new FileStream(AttemptPath(files.Directory, lease.Attempt), FileMode.Append, FileAccess.Write, FileShare.Read, bufferSize: 1 << 16, useAsync: true);
            await using (stream.ConfigureAwait(false))
            {
                var bytes = Encoding.UTF8.GetBytes(text.ToString());
                await stream.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
            }

            files.NextOffset += lines.Count;
            return entries;
        }
        finally
        {
            files.Lock.Release();
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

            using var reader = new StreamReader(new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1 << 16, useAsync: true), Encoding.UTF8);
            while (await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } line)
            {
                if (Parse(line, attempt) is not { } entry || entry.Offset < query.Offset)
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

    private static async Task<long> RecoverNextOffsetAsync(string directory, CancellationToken cancellationToken)
    {
        long next = 0;
        foreach (var (attempt, path) in AttemptFiles(directory))
        {
            string? last = null;
            using var reader = new StreamReader(path, Encoding.UTF8);
            while (await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } line)
            {
                last = line;
            }

            if (last is not null && Parse(last, attempt) is { } entry)
            {
                next = Math.Max(next, entry.Offset + 1);
            }
        }

        return next;
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

    private static LogEntry? Parse(string line, int attempt)
    {
        var parts = line.Split('\t', 4);
        if (parts.Length != 4
            || !long.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var offset)
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
    }
}
