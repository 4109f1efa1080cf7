namespace JobRunner.Tests.Abstractions;

public sealed class RetryPolicyTests
{
    private static readonly Exception Failure = new IOException("boom");

    [Fact]
    public void None_NeverRetries()
    {
        Assert.Null(RetryPolicy.None.GetRetryDelay(1, Failure));
        Assert.Equal(1, RetryPolicy.None.MaxAttempts);
    }

    [Fact]
    public void Fixed_SameDelayUntilMaxAttempts()
    {
        var policy = RetryPolicy.Fixed(TimeSpan.FromSeconds(3), maxAttempts: 3);

        Assert.Equal(TimeSpan.FromSeconds(3), policy.GetRetryDelay(1, Failure));
        Assert.Equal(TimeSpan.FromSeconds(3), policy.GetRetryDelay(2, Failure));
        Assert.Null(policy.GetRetryDelay(3, Failure));
    }

    [Fact]
    public void Linear_GrowsByStepAndIsCapped()
    {
        var policy = RetryPolicy.Linear(TimeSpan.FromSeconds(2), maxAttempts: 10, maxDelay: TimeSpan.FromSeconds(5));

        Assert.Equal(TimeSpan.FromSeconds(2), policy.GetRetryDelay(1, Failure));
        Assert.Equal(TimeSpan.FromSeconds(4), policy.GetRetryDelay(2, Failure));
        Assert.Equal(TimeSpan.FromSeconds(5), policy.GetRetryDelay(3, Failure));
    }

    [Fact]
    public void Exponential_WithoutJitter_DoublesAndIsCapped()
    {
        var policy = RetryPolicy.Exponential(TimeSpan.FromSeconds(1), maxAttempts: 10, maxDelay: TimeSpan.FromSeconds(10), useJitter: false);

        Assert.Equal(TimeSpan.FromSeconds(1), policy.GetRetryDelay(1, Failure));
        Assert.Equal(TimeSpan.FromSeconds(2), policy.GetRetryDelay(2, Failure));
        Assert.Equal(TimeSpan.FromSeconds(4), policy.GetRetryDelay(3, Failure));
        Assert.Equal(TimeSpan.FromSeconds(10), policy.GetRetryDelay(5, Failure));
        Assert.Null(policy.GetRetryDelay(10, Failure));
    }

    [Fact]
    public void Exponential_WithJitter_StaysWithinHalfToFullDelay()
    {
        var policy = RetryPolicy.Exponential(TimeSpan.FromSeconds(8), maxAttempts: 5);
        var seen = new HashSet<TimeSpan>();
        for (var i = 0; i < 200; i++)
        {
            var delay = policy.GetRetryDelay(2, Failure)!.Value;
            Assert.InRange(delay, TimeSpan.FromSeconds(8), TimeSpan.FromSeconds(16));
            seen.Add(delay);
        }

        Assert.True(seen.Count > 1, "jitter should spread the delays");
    }

    [Fact]
    public void Exponential_HugeAttemptNumber_IsCappedAtDefaultMaxDelay()
    {
        var policy = RetryPolicy.Exponential(TimeSpan.FromSeconds(1), maxAttempts: int.MaxValue, useJitter: false);

        Assert.Equal(RetryPolicy.DefaultMaxDelay, policy.GetRetryDelay(1000, Failure));
    }

    [Fact]
    public void Factories_InvalidArguments_Throw()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => RetryPolicy.Fixed(TimeSpan.FromSeconds(-1), 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => RetryPolicy.Fixed(TimeSpan.FromSeconds(1), 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => RetryPolicy.Exponential(TimeSpan.FromSeconds(10), 3, maxDelay: TimeSpan.FromSeconds(1)));
    }
}
