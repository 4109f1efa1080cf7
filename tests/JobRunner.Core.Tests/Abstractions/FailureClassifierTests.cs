namespace JobRunner.Tests.Abstractions;

public sealed class FailureClassifierTests
{
    [Fact]
    public void Ctor_Defaults_UnknownIsTransient()
    {
        var classifier = new FailureClassifier();

        Assert.Equal(FailureKind.Transient, classifier.DefaultKind);
        Assert.Equal(FailureKind.Transient, classifier.Classify(new InvalidOperationException()));
    }

    [Fact]
    public void Classify_JobRunnerException_UsesIsTransient()
    {
        var classifier = new FailureClassifier();

        Assert.Equal(FailureKind.Permanent, classifier.Classify(new PermanentJobException("bad input")));
        Assert.Equal(FailureKind.Transient, classifier.Classify(new TransientJobException("try later")));
        Assert.Equal(FailureKind.Permanent, classifier.Classify(new JobTimeoutException(default, TimeSpan.FromSeconds(1))));
    }

    [Fact]
    public void Permanent_ByType_MatchesDerivedTypes()
    {
        var classifier = new FailureClassifier().Permanent<ArgumentException>();

        Assert.Equal(FailureKind.Permanent, classifier.Classify(new ArgumentNullException("x")));
        Assert.Equal(FailureKind.Transient, classifier.Classify(new IOException()));
    }

    [Fact]
    public void When_Predicate_FirstMatchingRuleWins()
    {
        var classifier = new FailureClassifier { DefaultKind = FailureKind.Permanent }
            .When(e => e.Message.Contains("429", StringComparison.Ordinal), FailureKind.Transient)
            .Permanent<HttpRequestException>();

        Assert.Equal(FailureKind.Transient, classifier.Classify(new HttpRequestException("429 Too Many Requests")));
        Assert.Equal(FailureKind.Permanent, classifier.Classify(new HttpRequestException("404")));
        Assert.Equal(FailureKind.Permanent, classifier.Classify(new IOException()));
    }

    [Fact]
    public void Transient_RuleOverridesJobRunnerException()
    {
        var classifier = new FailureClassifier().Transient<JobTimeoutException>();

        Assert.Equal(FailureKind.Transient, classifier.Classify(new JobTimeoutException(default, TimeSpan.FromSeconds(1))));
    }
}
