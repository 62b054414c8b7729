// ProdSegmenter on AKS, one resource group per environment:
//   AKS (system pool, CPU pool for gateways, GPU pool for Triton with a taint and autoscaler bounds),
//   ACR, a storage account + container for the Triton model repository, workload identities with
//   federated credentials for the Triton and engine-builder service accounts, Log Analytics.
// Deployed by infra/deploy.sh (az deployment group create); parameters per environment in
// environments/<env>.parameters.json. The chart's values must agree with the names below
// (pool labels and taint, namespace, service accounts): tests/infra checks that they do.

@description('Short environment name (dev, prod): suffix of every resource name.')
@minLength(2)
@maxLength(8)
param environmentName string

param location string = resourceGroup().location

@description('Kubernetes minor version (the chart needs >= 1.30).')
param kubernetesVersion string = '1.32'

@description('CIDRs allowed to reach the API server (empty = any; set it for production).')
param apiServerAuthorizedIpRanges array = []

@description('Entra group IDs that get cluster-admin through Azure RBAC.')
param adminGroupObjectIds array = []

param systemPoolVmSize string = 'Standard_D4ds_v5'
param systemPoolCount int = 3

@description('CPU pool for the gateways (decode, overlay, encode).')
param cpuPoolVmSize string = 'Standard_D8ds_v5'
@minValue(0)
param cpuPoolMinCount int = 2
param cpuPoolMaxCount int = 10

@description('GPU pool for Triton, e.g. Standard_NC4as_T4_v3 (T4, sm75) or Standard_NC24ads_A100_v4 (A100, sm80).')
param gpuPoolVmSize string = 'Standard_NC4as_T4_v3'
@minValue(0)
param gpuPoolMinCount int = 1
param gpuPoolMaxCount int = 4
@description('Ephemeral OS disks need a VM cache/temp disk larger than osDiskSizeGB (T4 VMs have one; A100 v4 VMs do not: use Managed there).')
@allowed([ 'Ephemeral', 'Managed' ])
param gpuPoolOsDiskType string = 'Ephemeral'

@description('OS disk size of every pool (images: Triton\'s is ~15 GB).')
param osDiskSizeGB int = 128

@description('Namespace and Helm release the chart is installed with (fixes the service account names).')
param appNamespace string = 'prodseg'
param helmRelease string = 'prodsegmenter'

@description('Days Log Analytics keeps container logs.')
param logRetentionDays int = 30

var suffix = '${environmentName}${uniqueString(resourceGroup().id)}'
var clusterName = 'aks-prodseg-${environmentName}'
// The chart names service accounts <release>-prodsegmenter-<component> (or <release>-<component>
// when the release name already contains "prodsegmenter"): see charts/prodsegmenter/templates/_helpers.tpl.
var chartFullname = contains(helmRelease, 'prodsegmenter') ? helmRelease : '${helmRelease}-prodsegmenter'
var tritonServiceAccount = '${chartFullname}-triton'
var engineBuilderServiceAccount = '${chartFullname}-engine-builder'
var modelContainerName = 'models'

// Built-in role definition IDs.
var acrPullRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '7f951dda-4ed3-4680-a7ca-43fe172d538d')
var blobReaderRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1')
var blobContributorRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe')

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-prodseg-${environmentName}'
  location: location
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: logRetentionDays
  }
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'acrprodseg${suffix}'
  location: location
  sku: { name: 'Premium' }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    policies: {
      quarantinePolicy: { status: 'disabled' }
      retentionPolicy: { status: 'enabled', days: 30 }
      trustPolicy: { status: 'enabled', type: 'Notary' }
    }
  }
}

resource modelStore 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take('stprodseg${suffix}', 24)
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_GZRS' }
  properties: {
    // Entra ID only: pods sign in with workload identity, nobody holds an account key.
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: modelStore
  name: 'default'
  properties: {
    // Published versions are immutable in practice: soft delete lets a mistaken delete be undone.
    deleteRetentionPolicy: { enabled: true, days: 14 }
    containerDeleteRetentionPolicy: { enabled: true, days: 14 }
    isVersioningEnabled: true
  }
}

resource modelContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: modelContainerName
  properties: { publicAccess: 'None' }
}

resource cluster 'Microsoft.ContainerService/managedClusters@2024-05-01' = {
  name: clusterName
  location: location
  sku: { name: 'Base', tier: 'Standard' }
  identity: { type: 'SystemAssigned' }
  properties: {
    kubernetesVersion: kubernetesVersion
    dnsPrefix: clusterName
    enableRBAC: true
    disableLocalAccounts: true
    aadProfile: {
      managed: true
      enableAzureRBAC: true
      adminGroupObjectIDs: adminGroupObjectIds
    }
    apiServerAccessProfile: {
      authorizedIPRanges: apiServerAuthorizedIpRanges
    }
    // Workload identity: the OIDC issuer signs service account tokens that Entra trusts through
    // the federated credentials below.
    oidcIssuerProfile: { enabled: true }
    securityProfile: {
      workloadIdentity: { enabled: true }
      imageCleaner: { enabled: true, intervalHours: 48 }
    }
    // Azure CNI overlay with Cilium: enforces the chart's NetworkPolicies.
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      networkPolicy: 'cilium'
      loadBalancerSku: 'standard'
    }
    // Managed NGINX (application routing): the chart's ingress.className.
    ingressProfile: {
      webAppRouting: { enabled: true }
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
    addonProfiles: {
      omsagent: {
        enabled: true
        config: { logAnalyticsWorkspaceResourceID: logs.id }
      }
      azurepolicy: { enabled: true }
      kubeDashboard: { enabled: false }
    }
    agentPoolProfiles: [
      {
        name: 'system'
        osDiskType: 'Ephemeral'
        osDiskSizeGB: osDiskSizeGB
        enableEncryptionAtHost: true
        mode: 'System'
        vmSize: systemPoolVmSize
        count: systemPoolCount
        osType: 'Linux'
        osSKU: 'AzureLinux'
        type: 'VirtualMachineScaleSets'
        availabilityZones: [ '1', '2', '3' ]
        maxPods: 50
        // Only cluster add-ons on the system pool.
        nodeTaints: [ 'CriticalAddonsOnly=true:NoSchedule' ]
        nodeLabels: { 'prodseg.io/pool': 'system' }
      }
      {
        name: 'cpu'
        osDiskType: 'Ephemeral'
        osDiskSizeGB: osDiskSizeGB
        enableEncryptionAtHost: true
        mode: 'User'
        vmSize: cpuPoolVmSize
        osType: 'Linux'
        osSKU: 'AzureLinux'
        type: 'VirtualMachineScaleSets'
        availabilityZones: [ '1', '2', '3' ]
        maxPods: 50
        enableAutoScaling: true
        minCount: cpuPoolMinCount
        maxCount: cpuPoolMaxCount
        count: cpuPoolMinCount
        nodeLabels: { 'prodseg.io/pool': 'cpu' }
      }
      {
        name: 'gpu'
        osDiskType: gpuPoolOsDiskType
        osDiskSizeGB: osDiskSizeGB
        enableEncryptionAtHost: true
        mode: 'User'
        vmSize: gpuPoolVmSize
        osType: 'Linux'
        osSKU: 'Ubuntu'
        type: 'VirtualMachineScaleSets'
        maxPods: 30
        enableAutoScaling: true
        minCount: gpuPoolMinCount
        maxCount: gpuPoolMaxCount
        count: gpuPoolMinCount
        // Only pods that tolerate this (Triton, the engine builds) land on GPU nodes.
        nodeTaints: [ 'nvidia.com/gpu=present:NoSchedule' ]
        nodeLabels: { 'prodseg.io/pool': 'gpu' }
      }
    ]
    autoScalerProfile: {
      // GPU nodes are expensive: give them back after 10 idle minutes, but not while a pod with
      // local data (the model emptyDir) runs there.
      'scale-down-unneeded-time': '10m'
      'skip-nodes-with-local-storage': 'false'
      expander: 'least-waste'
    }
  }
}

// The kubelet pulls images from the registry with its own identity.
resource kubeletAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, cluster.id, 'acrpull')
  scope: registry
  properties: {
    roleDefinitionId: acrPullRole
    principalId: cluster.properties.identityProfile.kubeletidentity.objectId
    principalType: 'ServicePrincipal'
  }
}

// Triton's init container reads the model store.
resource tritonIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-prodseg-triton-${environmentName}'
  location: location
}

resource tritonFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: tritonIdentity
  name: 'aks-${tritonServiceAccount}'
  properties: {
    issuer: cluster.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:${appNamespace}:${tritonServiceAccount}'
    audiences: [ 'api://AzureADTokenExchange' ]
  }
}

resource tritonBlobReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(modelStore.id, tritonIdentity.id, 'blob-reader')
  scope: modelStore
  properties: {
    roleDefinitionId: blobReaderRole
    principalId: tritonIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The engine-build Jobs upload TensorRT plans next to the model versions.
resource engineBuilderIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-prodseg-engine-builder-${environmentName}'
  location: location
}

resource engineBuilderFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: engineBuilderIdentity
  name: 'aks-${engineBuilderServiceAccount}'
  // Federated credentials of one identity must not be written concurrently.
  dependsOn: [ tritonFederation ]
  properties: {
    issuer: cluster.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:${appNamespace}:${engineBuilderServiceAccount}'
    audiences: [ 'api://AzureADTokenExchange' ]
  }
}

resource engineBuilderBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(modelStore.id, engineBuilderIdentity.id, 'blob-contributor')
  scope: modelStore
  properties: {
    roleDefinitionId: blobContributorRole
    principalId: engineBuilderIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// What infra/deploy.sh passes to the chart.
output clusterName string = cluster.name
output acrLoginServer string = registry.properties.loginServer
output modelStoreBlobEndpoint string = modelStore.properties.primaryEndpoints.blob
output modelStoreContainer string = modelContainer.name
output tritonIdentityClientId string = tritonIdentity.properties.clientId
output engineBuilderIdentityClientId string = engineBuilderIdentity.properties.clientId
output tenantId string = tenant().tenantId
output oidcIssuerUrl string = cluster.properties.oidcIssuerProfile.issuerURL
