using JobRunner.InMemory;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.InMemory;

public sealed class InMemoryLogStoreTests
{
    private readonly FakeTimeProvider _time = new();
    private readonly InMemoryLogStore _logs = new(Options.Create(new InMemoryStoreOptions { MaxLogLinesPerJob = 5, MaxFinishedJobs = 2 }));

    private static LogLine[] Lines(DateTimeOffset at, LogStream stream, params string[] messages)
        => [.. messages.Select(m => new LogLine(at, stream, m))];

    private JobLease LeaseFor(JobId id, int attempt = 1) => new(id, "w", attempt, attempt, _time.GetUtcNow().AddMinutes(1));

    [Fact]
    public async Task ReadAsync_PagesByOffsetAndLimit()
    {
        var lease = LeaseFor(JobId.New(_time));
        await _logs.AppendAsync(lease, Lines(_time.GetUtcNow(), LogStream.Output, "a", "b", "c"), default);

        var first = await _logs.ReadAsync(lease.JobId, new LogQuery { Limit = 2 }, default);
        var second = await _logs.ReadAsync(lease.JobId, new LogQuery { Offset = first.NextOffset, Limit = 2 }, default);

        Assert.Equal(["a", "b"], first.Entries.Select(e => e.Message));
        Assert.Equal(2, first.NextOffset);
        Assert.Equal(["c"], second.Entries.Select(e => e.Message));
        Assert.Equal(3, second.NextOffset);
    }

    [Fact]
    public async Task ReadAsync_FiltersByAttemptAndSince()
    {
        var id = JobId.New(_time);
        await _logs.AppendAsync(LeaseFor(id, 1), Lines(_time.GetUtcNow(), LogStream.Output, "one"), default);
        _time.Advance(TimeSpan.FromMinutes(1));
        var since = _time.GetUtcNow();
        await _logs.AppendAsync(LeaseFor(id, 2), Lines(since, LogStream.Error, "two"), default);

        var attempt1 = await _logs.ReadAsync(id, new LogQuery { Attempt = 1 }, default);
        var recent = await _logs.ReadAsync(id, new LogQuery { Since = since }, default);

        Assert.Equal(["one"], attempt1.Entries.Select(e => e.Message));
        var line = Assert.Single(recent.Entries);
        Assert.Equal(("two", 2, LogStream.Error), (line.Message, line.Attempt, line.Stream));
    }

    [Fact]
    public async Task AppendAsync_BeyondBound_DropsOldestAndCountsThem()
    {
        var lease = LeaseFor(JobId.New(_time));
        await _logs.AppendAsync(lease, Lines(_time.GetUtcNow(), LogStream.Output, "1", "2", "3", "4", "5", "6", "7"), default);

        var page = await _logs.ReadAsync(lease.JobId, new LogQuery(), default);

        Assert.Equal(["3", "4", "5", "6", "7"], page.Entries.Select(e => e.Message));
        Assert.Equal(2, page.DroppedLines);
        Assert.Equal(2, page.Entries[0].Offset);
    }

    [Fact]
    public async Task AppendAsync_QuietJobEvictedByOthers_ContinuesItsOffsets_AndCountsItsLostLinesAsDropped()
    {
        // Two logs at most: a running job that stays quiet while two others write is evicted, then writes again.
        var quiet = LeaseFor(JobId.New(_time));
        await _logs.AppendAsync(quiet, Lines(_time.GetUtcNow(), LogStream.Output, "a", "b", "c"), default);
        await _logs.AppendAsync(LeaseFor(JobId.New(_time)), Lines(_time.GetUtcNow(), LogStream.Output, "x"), default);
        await _logs.AppendAsync(LeaseFor(JobId.New(_time)), Lines(_time.GetUtcNow(), LogStream.Output, "y"), default);

        var whileEvicted = await _logs.ReadAsync(quiet.JobId, new LogQuery(), default);
        var again = await _logs.AppendAsync(quiet, Lines(_time.GetUtcNow(), LogStream.Output, "d"), default);
        var tail = await _logs.ReadAsync(quiet.JobId, new LogQuery { Offset = whileEvicted.NextOffset }, default);
        var all = await _logs.ReadAsync(quiet.JobId, new LogQuery(), default);

        Assert.Equal((3L, 3L), (whileEvicted.NextOffset, whileEvicted.DroppedLines));
        Assert.Equal(3L, Assert.Single(again).Offset);
        Assert.Equal(["d"], tail.Entries.Select(e => e.Message));
        Assert.Equal(["d"], all.Entries.Select(e => e.Message));
        Assert.Equal((4L, 3L), (all.NextOffset, all.DroppedLines));
    }

    [Fact]
    public async Task AppendAsync_QuietJobEvictedTwice_StillContinuesItsOffsets()
    {
        // Two logs at most. Evicted, written to, evicted again while its first eviction is still in the record of
        // evictions: that first record, when it leaves, must not take the second eviction's end with it.
        var quiet = LeaseFor(JobId.New(_time));
        var busy = LeaseFor(JobId.New(_time));
        await _logs.AppendAsync(quiet, Lines(_time.GetUtcNow(), LogStream.Output, "a", "b"), default);
        await _logs.AppendAsync(LeaseFor(JobId.New(_time)), Lines(_time.GetUtcNow(), LogStream.Output, "x"), default);
        await _logs.AppendAsync(busy, Lines(_time.GetUtcNow(), LogStream.Output, "y"), default);
        await _logs.AppendAsync(quiet, Lines(_time.GetUtcNow(), LogStream.Output, "c"), default);
        await _logs.AppendAsync(busy, Lines(_time.GetUtcNow(), LogStream.Output, "y2"), default);
        await _logs.AppendAsync(LeaseFor(JobId.New(_time)), Lines(_time.GetUtcNow(), LogStream.Output, "z"), default);

        var again = await _logs.AppendAsync(quiet, Lines(_time.GetUtcNow(), LogStream.Output, "d"), default);

        Assert.Equal(3L, Assert.Single(again).Offset);
        Assert.Equal(3L, (await _logs.ReadAsync(quiet.JobId, new LogQuery(), default)).DroppedLines);
    }

    [Fact]
    public async Task ReadAsync_UnknownJob_IsEmpty()
    {
        var page = await _logs.ReadAsync(JobId.New(_time), new LogQuery(), default);

        Assert.Empty(page.Entries);
        Assert.Equal(0, page.DroppedLines);
    }

    [Fact]
    public async Task ReadAsync_InvalidLimit_Throws()
    {
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _logs.ReadAsync(JobId.New(_time), new LogQuery { Limit = 0 }, default).AsTask());
    }

    [Fact]
    public async Task AppendAsync_BeyondJobBound_EvictsTheLeastRecentlyWrittenLog()
    {
        var active = LeaseFor(JobId.New(_time));
        var idle = LeaseFor(JobId.New(_time));
        await _logs.AppendAsync(active, Lines(_time.GetUtcNow(), LogStream.Output, "a1"), default);
        await _logs.AppendAsync(idle, Lines(_time.GetUtcNow(), LogStream.Output, "i1"), default);
        await _logs.AppendAsync(active, Lines(_time.GetUtcNow(), LogStream.Output, "a2"), default);

        await _logs.AppendAsync(LeaseFor(JobId.New(_time)), Lines(_time.GetUtcNow(), LogStream.Output, "new"), default);

        Assert.Equal(["a1", "a2"], (await _logs.ReadAsync(active.JobId, new LogQuery(), default)).Entries.Select(e => e.Message));
        Assert.Empty((await _logs.ReadAsync(idle.JobId, new LogQuery(), default)).Entries);
    }
}
