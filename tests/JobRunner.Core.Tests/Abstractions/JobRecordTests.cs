using JobRunner.Testing;

namespace JobRunner.Tests.Abstractions;

public sealed class JobRecordTests
{
    private readonly FakeTimeProvider _time = new();

    [Fact]
    public void With_ChangingARarelyUsedField_LeavesTheOriginalSnapshotAsItWas()
    {
        var queued = Record() with { LastError = "first", Checkpoint = new byte[] { 1 } };

        var cancelled = queued with { CancelRequested = true, CancelReason = "stop", LastError = "second", DueAt = _time.GetUtcNow() };

        Assert.Equal("first", queued.LastError);
        Assert.False(queued.CancelRequested);
        Assert.Null(queued.CancelReason);
        Assert.Null(queued.DueAt);
        Assert.Equal("second", cancelled.LastError);
        Assert.True(cancelled.CancelRequested);
        Assert.Equal("stop", cancelled.CancelReason);
        Assert.Equal(_time.GetUtcNow(), cancelled.DueAt);
        Assert.Equal(new byte[] { 1 }, cancelled.Checkpoint!.Value.ToArray());
    }

    [Fact]
    public void Equality_IgnoresWhetherAFieldWasSetAndClearedAgain()
    {
        var plain = Record();
        var progress = new JobProgress(0.5, "half");

        var roundTrip = plain with { LastError = "x", DueAt = _time.GetUtcNow(), Progress = progress } with { LastError = null, DueAt = null, Progress = null };

        Assert.Equal(plain, roundTrip);
        Assert.Equal(plain.GetHashCode(), roundTrip.GetHashCode());
        Assert.NotEqual(plain, plain with { Progress = progress });
        Assert.Equal(plain with { Progress = progress }, plain with { Progress = new JobProgress(0.5, "half") });
    }

    private JobRecord Record() => new()
    {
        Id = JobId.New(_time),
        Request = new JobRequest("w"),
        State = JobState.Queued,
        CreatedAt = _time.GetUtcNow(),
        UpdatedAt = _time.GetUtcNow(),
    };
}
