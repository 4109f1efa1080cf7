namespace JobRunner.Aws.Tests.Sqs;

[CollectionDefinition(nameof(EnvironmentCollection), DisableParallelization = true)]
public sealed class EnvironmentCollection;

/// <summary>The default credential chain, with the process environment emptied of credentials (so not in parallel).</summary>
[Collection(nameof(EnvironmentCollection))]
public sealed class CredentialsTests
{
    [Fact]
    public void NoCredentialsAnywhere_FailsWithAnErrorThatNamesTheFix()
    {
        var names = new[] { "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI" };
        var saved = names.ToDictionary(n => n, Environment.GetEnvironmentVariable);
        var empty = Path.Combine(Path.GetTempPath(), "jobrunner-no-aws-" + Guid.NewGuid().ToString("N"));
        try
        {
            foreach (var name in names)
            {
                Environment.SetEnvironmentVariable(name, null);
            }

            Environment.SetEnvironmentVariable("AWS_SHARED_CREDENTIALS_FILE", Path.Combine(empty, "credentials"));
            Environment.SetEnvironmentVariable("AWS_CONFIG_FILE", Path.Combine(empty, "config"));
            // Never ask the instance metadata service (a non-loopback address) from a test.
            Environment.SetEnvironmentVariable("AWS_EC2_METADATA_DISABLED", "true");

            var error = Assert.Throws<AwsServiceException>(() => AwsSetup.ResolveCredentials(null, nameof(SqsQueueOptions)));

            Assert.Equal("MissingCredentials", error.Code);
            Assert.Contains("Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", error.Message, StringComparison.Ordinal);
            Assert.Contains("SqsQueueOptions.Credentials", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            foreach (var (name, value) in saved)
            {
                Environment.SetEnvironmentVariable(name, value);
            }
        }
    }
}
