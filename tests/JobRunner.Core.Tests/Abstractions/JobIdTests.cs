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

    [Fact]
    public void New_IsAVersion7GuidStampedWithTheClocksMilliseconds()
    {
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 22, 12, 0, 0, 123, TimeSpan.Zero));

        var text = JobId.New(time).ToString();

        // 48 bits of Unix milliseconds, then version 7, then the variant bits 10 (8, 9, a or b).
        var milliseconds = time.GetUtcNow().ToUnixTimeMilliseconds();
        Assert.Equal(milliseconds.ToString("x12", System.Globalization.CultureInfo.InvariantCulture), text[..8] + text[9..13]);
        Assert.Equal('7', text[14]);
        Assert.Contains(text[19], "89ab");
    }

    [Fact]
    public void New_ManyInTheSameMillisecond_AreUniqueAcrossThreads()
    {
        var time = new FakeTimeProvider();
        var ids = new System.Collections.Concurrent.ConcurrentBag<JobId>();

        // More than one random buffer per thread (32 ids each), on several threads at once.
        Parallel.For(0, 4, _ =>
        {
            for (var i = 0; i < 1000; i++)
            {
                ids.Add(JobId.New(time));
            }
        });

        Assert.Equal(4000, ids.Distinct().Count());
    }
}
