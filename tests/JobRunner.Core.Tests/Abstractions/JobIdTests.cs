using JobRunner.Testing;

namespace JobRunner.Tests.Abstractions;

public sealed class JobIdTests
{
    [Fact]
    public void New_LaterTime_SortsAfter()
    {
        var time = new FakeTimeProvider();
        var first = JobId.New(time);
        time.Advance(TimeSpan.FromMilliseconds(2));
        var second = JobId.New(time);

        Assert.True(first < second);
        Assert.NotEqual(first, second);
    }

    [Fact]
    public void Parse_RoundTripsToString()
    {
        var id = JobId.New(TimeProvider.System);

        Assert.Equal(id, JobId.Parse(id.ToString()));
        Assert.True(JobId.TryParse(id.ToString(), out var parsed));
        Assert.Equal(id, parsed);
        Assert.False(JobId.TryParse("nope", out _));
    }
}
