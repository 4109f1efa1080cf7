using System.Diagnostics;
using Microsoft.Extensions.Options;

namespace JobRunner.InMemory;

/// <summary>
/// The embedded log store: a bounded ring of lines per job (the oldest lines are dropped and counted), and at most
/// <see cref="InMemoryStoreOptions.MaxFinishedJobs"/> jobs' logs (the oldest job's log goes first).
/// </summary>
[DebuggerDisplay("Jobs = {_logs.Count}")]
internal sealed class InMemoryLogStore : ILogStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<JobId, JobLog> _logs = [];
    private readonly Queue<JobId> _order = new();
    private readonly int _maxLines;
    private readonly int _maxJobs;

    public InMemoryLogStore(IOptions<InMemoryStoreOptions> options)
    {
        _maxLines = options.Value.MaxLogLinesPerJob;
        _maxJobs = options.Value.MaxFinishedJobs;
    }

    public ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, LogStream stream, DateTimeOffset timestamp, IReadOnlyList<string> messages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(messages);
        var entries = new LogEntry[messages.Count];
        lock (_lock)
        {
            if (!_logs.TryGetValue(lease.JobId, out var log))
            {
                log = new JobLog();
                _logs.Add(lease.JobId, log);
                _order.Enqueue(lease.JobId);
                while (_order.Count > _maxJobs)
                {
                    _logs.Remove(_order.Dequeue());
                }
            }

            for (var i = 0; i < messages.Count; i++)
            {
                var entry = new LogEntry(log.NextOffset++, lease.Attempt, timestamp, stream, messages[i]);
                entries[i] = entry;
                log.Lines.Enqueue(entry);
                if (log.Lines.Count > _maxLines)
                {
                    log.Lines.Dequeue();
                    log.Dropped++;
                }
            }
        }

        return new(entries);
    }

    public ValueTask<LogPage> ReadAsync(JobId jobId, LogQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Offset, 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(query.Limit, 10_000);
        lock (_lock)
        {
            if (!_logs.TryGetValue(jobId, out var log))
            {
                return new(new LogPage([], query.Offset, 0));
            }

            var result = new List<LogEntry>(Math.Min(query.Limit, log.Lines.Count));
            var next = Math.Max(query.Offset, log.NextOffset);
            foreach (var entry in log.Lines)
            {
                if (entry.Offset < query.Offset
                    || (query.Attempt is { } attempt && entry.Attempt != attempt)
                    || (query.Since is { } since && entry.Timestamp < since))
                {
                    continue;
                }

                if (result.Count == query.Limit)
                {
                    next = entry.Offset;
                    break;
                }

                result.Add(entry);
            }

            return new(new LogPage(result, next, log.Dropped));
        }
    }

    private sealed class JobLog
    {
        public Queue<LogEntry> Lines { get; } = new();

        public long NextOffset { get; set; }

        public long Dropped { get; set; }
    }
}
