using Microsoft.Extensions.Hosting;

namespace JobRunner.Kubernetes.Engine;

/// <summary>Starts the host's look for Kubernetes Jobs left running for finished jobs when the application starts.</summary>
internal sealed class KubernetesSweepStarter(KubernetesEngineHost host) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        host.StartSweeping();
        return Task.CompletedTask;
    }

    // The engine host stops the look when it is disposed.
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
