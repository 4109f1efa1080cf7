namespace JobRunner.Kubernetes.Tests;

public sealed class KubernetesEngineOptionsValidatorTests
{
    private static readonly TimeSpan s_timerMax = TimeSpan.FromMilliseconds(0xfffffffe);

    public static TheoryData<string, TimeSpan> TooLong => new()
    {
        { nameof(KubernetesEngineOptions.ImagePullBackOffLimit), TimeSpan.MaxValue },
        { nameof(KubernetesEngineOptions.ImagePullBackOffLimit), s_timerMax + TimeSpan.FromMilliseconds(1) },
        { nameof(KubernetesEngineOptions.UnschedulableLimit), TimeSpan.MaxValue },
        { nameof(KubernetesEngineOptions.UnschedulableLimit), TimeSpan.FromDays(50) },
    };

    private static KubernetesEngineOptions With(string property, TimeSpan value)
    {
        var options = new KubernetesEngineOptions { Server = new Uri("http://127.0.0.1:1") };
        typeof(KubernetesEngineOptions).GetProperty(property)!.SetValue(options, value);
        return options;
    }

    [Theory]
    [MemberData(nameof(TooLong))]
    public void Validate_LimitLongerThanATimerTakes_FailsNamingTheLimit(string property, TimeSpan value)
    {
        var result = new KubernetesEngineOptionsValidator().Validate(null, With(property, value));

        Assert.True(result.Failed);
        var failure = Assert.Single(result.Failures!);
        Assert.StartsWith($"KubernetesEngineOptions.{property} must be zero or more and at most 49.7 days", failure, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(nameof(KubernetesEngineOptions.ImagePullBackOffLimit))]
    [InlineData(nameof(KubernetesEngineOptions.UnschedulableLimit))]
    [InlineData(nameof(KubernetesEngineOptions.ContainerStartLimit))]
    [InlineData(nameof(KubernetesEngineOptions.ImagePullLimit))]
    public void Validate_LimitOfExactlyTheTimerMaximum_Succeeds(string property)
    {
        Assert.True(new KubernetesEngineOptionsValidator().Validate(null, With(property, s_timerMax)).Succeeded);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(0xfffffffeL + 1)]
    public void Validate_ContainerStartLimit_MustBePositive_AndWhatATimerTakes(long milliseconds)
    {
        // Zero would fail nearly every attempt: every container waits in ContainerCreating for a moment.
        var result = new KubernetesEngineOptionsValidator().Validate(null, With(nameof(KubernetesEngineOptions.ContainerStartLimit), TimeSpan.FromMilliseconds(milliseconds)));

        Assert.True(result.Failed);
        var failure = Assert.Single(result.Failures!);
        Assert.StartsWith("KubernetesEngineOptions.ContainerStartLimit must be positive and at most 49.7 days", failure, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(0xfffffffeL + 1)]
    public void Validate_ImagePullLimit_MustBePositive_AndWhatATimerTakes(long milliseconds)
    {
        var result = new KubernetesEngineOptionsValidator().Validate(null, With(nameof(KubernetesEngineOptions.ImagePullLimit), TimeSpan.FromMilliseconds(milliseconds)));

        Assert.True(result.Failed);
        var failure = Assert.Single(result.Failures!);
        Assert.StartsWith("KubernetesEngineOptions.ImagePullLimit must be positive and at most 49.7 days", failure, StringComparison.Ordinal);
    }

    [Fact]
    public void Ctor_ImagePullLimit_Is30Minutes()
    {
        Assert.Equal(TimeSpan.FromMinutes(30), new KubernetesEngineOptions().ImagePullLimit);
    }

    [Theory]
    [InlineData("ci.runner", true)]
    [InlineData("build-bot", true)]
    [InlineData("Bad_Name", false)]
    [InlineData("trailing.", false)]
    public void Validate_ServiceAccountName_IsADnsSubdomain(string name, bool valid)
    {
        var options = new KubernetesEngineOptions { Server = new Uri("http://127.0.0.1:1"), ServiceAccountName = name };

        Assert.Equal(valid, new KubernetesEngineOptionsValidator().Validate(null, options).Succeeded);
    }
}
