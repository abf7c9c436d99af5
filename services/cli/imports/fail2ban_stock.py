"""SHA-256 of the filter files of fail2ban 1.0.2 (Debian 12, Ubuntu 24.04), by file name.

A filter whose files all hash as listed is fail2ban's own: a jail using it maps
onto the catalog rule of that name. Only hashes are kept here, never the
filters (they are GPL). Print the table for an extracted package with
    python -m pyfilter.cli.imports.fail2ban_stock /path/to/etc/fail2ban
(tests/unit/test_import_fail2ban.py checks it against Debian's package).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

STOCK_RELEASE = "1.0.2"

STOCK_FILTERS = {
    "3proxy.conf": "4fc31e96fecb720acb9d5412b0cb45c4b3258727d1b813b02a02ea108d2e7894",
    "apache-auth.conf": "b4be2cf0f3d139d6ddd668c1c58b5cd43742aae2f83e0df4031b0e9aefee854d",
    "apache-badbots.conf": "9d9548dc5e7e81283ba4de38ff19770f66cd7051143980f0e40139fcf7b63ad6",
    "apache-botsearch.conf": "aeb4059d897b87619634e8af6beb4cca1c960ed16cc109ae2989e5deaf1316bd",
    "apache-common.conf": "f754437d6e66255da7c43fc089380b9aaacc605adf00278fa1cdcba3c4bd082d",
    "apache-fakegooglebot.conf": "0d2cb5f1e939df6d05cd7e0d621dede26d0508d191316288a217584b7aed8da7",
    "apache-modsecurity.conf": "df5c8c719add9b149c04293477a741c700268fddeb1540a425ff4b96fea48c4f",
    "apache-nohome.conf": "f41a2b46d6fbe59aafb56d68f506ad6f75bb93c5a3cb9ad1c92fff3fa74ae4f4",
    "apache-noscript.conf": "96f6bd77e781eca342af9c50922b3cb10f92fb42a406e12ac32bf87b6ef19b01",
    "apache-overflows.conf": "10570f82138142d50e6f0f732a2889090d00d83b5a108da4b5b959813cea0f9d",
    "apache-pass.conf": "2cc75b6857332e5319c66e87efda5905ef4a2449a3269bcdbec04f0eb833dd4e",
    "apache-shellshock.conf": "62e07f3f0d00540fe495f8f5a90a3187d85bc178209e741d178cbffdaeb54ff9",
    "assp.conf": "9a00dc85b5fa4f1374449784c9c7247edac4a994d13d7462cf507d38ed549db2",
    "asterisk.conf": "daa12226067c2ec414de403ef91a3c654d86108d6a1223698da9f748d4432e54",
    "bitwarden.conf": "0ad9e53669cf0a06b935f03b76055ef904717e2363d7ee0cb19c45d530b093c9",
    "botsearch-common.conf": "7bcd2e9bacd42c42a38e3597b86c642f002938dc02026e20600227350a16301e",
    "centreon.conf": "018491cee0f95962e774fa8b4a9dbed7e83510f226dd3dd48e8526fd5eb18aa9",
    "common.conf": "ebf00cecd2c4227189ca8e8d55049fe21cf2379e7d388cb160bc6c4caa63e4fa",
    "counter-strike.conf": "c90a81ff585cc3dda46831d93fcf2c4bde799ddf2374156c7e60aae982245093",
    "courier-auth.conf": "44627f46ce0eb2048ef6d80c5558c2856e0cd5d94b895d99f68c4dadb5856d51",
    "courier-smtp.conf": "c92091b56bbc4f11b185e6e2178345b92cbb779fe20067a4bf9863ca0e3c9c20",
    "cyrus-imap.conf": "0c3e154f19e5f2756f177b0a66597c6f67aa4dd4a79f42b659af5b74fcddd47d",
    "directadmin.conf": "6310505afa1b257e0ce7c6d3f562d48b0eb239d2a8651b160dfbe7a05c4aaed1",
    "domino-smtp.conf": "e492d97810b59eff1cb3ee8ffd30cae0262870777270c0f0633746f8f3cad91e",
    "dovecot.conf": "3f8e1df8bd41e7acbc34bab411edbc4825c84d0bea38bfd51b2d74108e330a62",
    "dropbear.conf": "b4921a07ed2e8fe0aefd1e2e762622b610a0b3ca3a529c5272fca55088f0c655",
    "drupal-auth.conf": "6423a7608985b226d2abf8fc85b19b682ba2c02be52a6c28c27a7348bfd26dab",
    "ejabberd-auth.conf": "ae2bd94bb6ffae9b8c0d46060d78d1268a8b3bc6e28f98c723cfd4757d61fa52",
    "exim-common.conf": "77b4155f2e981dfa21e3a8e1b266534a8733d3eef44d28364371804322107582",
    "exim-spam.conf": "de2e781142734efcfed5ddfd090585ac6dbd09580b94718506fc4ee83eb54168",
    "exim.conf": "9c87158d9c4a8b11e4c3ac6af335a7b75fa80144a3e2919247107b4f26261747",
    "freeswitch.conf": "0192c6ff5d368fe67f44967c49259f54b3bc48154879e0d28e34a6f276d7b815",
    "froxlor-auth.conf": "46b15b7e128da16ef8738cc4ce2f15d556ad3cd0ed726e0d5e8fe87ccc10ed0e",
    "gitlab.conf": "61a0fbcf10f909da5e5ed3a32ef2d67a04882e203366e72ea8b4d8dffeda7847",
    "grafana.conf": "88c887a3ca69881f1f8c89b7ab23883a46f6047e777742c295b8d16087668230",
    "groupoffice.conf": "e70a48cd45205acaae8e7a03bbe14d5665e62b234705d1b498a2680476352a16",
    "gssftpd.conf": "aa18c6abf6701131bc1867595b929e611eabb683b7f9fb23311536e362ef2446",
    "guacamole.conf": "e7768d0a47fe82897584c3d3ba288be5908a91bbbc5eebd5f902ed7c3140f1c7",
    "haproxy-http-auth.conf": "be59ed9285c2b43abb3ed49f8c85dda6bbb8df6e73dfcef28914436b92e085d7",
    "horde.conf": "593e050f386ec039447a398a18116b382b25a5693bf00a8e9c852fd20020c6f8",
    "kerio.conf": "d1644ada338af135b37bfac1e7b2086fda61a22f1be30954a8c2b239008d145e",
    "lighttpd-auth.conf": "22db233cbb5ef64afbb986eb13e6f6525a12c7c6df35c3ca6c487c056b0a112d",
    "mongodb-auth.conf": "9c62527062adb4bdac8ce182e00acc71720040f87bcf2e0d12898b5873998fb2",
    "monit.conf": "2fc3cb0a56652c3fe2497ff8490445a2170cdf642602bdc80faf557c45ac9f2c",
    "monitorix.conf": "1bcf7bdbead3e774eaed422b2ceb614f307c8bb236cb5f2346a91a6d1917f811",
    "mssql-auth.conf": "ee7921b2d5a26f1745f6ef4f9d2dd71cb999ccafbe3fa5dc68b545897cf7a11d",
    "murmur.conf": "5be9ad2a154764d52ac5767f004abf3839d795aa15f015b8880bca9111b295fa",
    "mysqld-auth.conf": "22c256bf664462187a3bcb2856c8d903e0a98b157c111f07f45c764d48546c57",
    "nagios.conf": "54028279298fb8a6caaf1f7b942a06ca569692702e9b768afcdc27a38500be76",
    "named-refused.conf": "5d7ec914599053b1038b76978a0ab6f2cb2fd98f5015b07cc4a438758c57eba7",
    "nginx-bad-request.conf": "7c2c4d42937e20063eda47de3a6ba79ad8a9c538d2d201dab930482a20ad8c36",
    "nginx-botsearch.conf": "b56be847e47c527ea077f3a462f31f1a2346464736f6f7ff4947c9356bbe23a7",
    "nginx-http-auth.conf": "e9284950f8da5509d768576ab7d9caa3f096340d21c2a1db341ffd0fad0ee0ca",
    "nginx-limit-req.conf": "b070ad89e822ca14819d6b0dc1f504078c6760ca48817da6c36669b0073859b6",
    "nsd.conf": "3ae97b23041cfcd766b8886c4566b3be4cc126937b9f564959f696da8cd3bda8",
    "openhab.conf": "eb11d0ad5a46b144ee4f97b447ae2f09fecc60bb70cb34bf2837966d6d94ba37",
    "openwebmail.conf": "a3d7d2062da7e94e896108ff0d3bc8117df87c035c487a35052d30a42c16de43",
    "oracleims.conf": "e7d703f2bcd07378a36ae6c197c5c7348f18ca855d5fb4a125faafe475e721b4",
    "pam-generic.conf": "dd1fb38c2dcd6c40c4351a1cde47d0a5dce91f278eeebf4ee96831509f5426fd",
    "perdition.conf": "10a3efd3e59cf4036f7347e3d7f6a5b353de6a210a10893b949ef264b513eee3",
    "php-url-fopen.conf": "f1f835d08084c5b173aecba038b30e9112f2cefbfdcaddd9536e01b5b3a6dc81",
    "phpmyadmin-syslog.conf": "88d1a1f168c22f0c7dcf7315171a9a8426275a5a2d62cc43e77fd6a65f13640f",
    "portsentry.conf": "8493091ae4a04bd3ebc0d702f476d9a73f098217531b4a9a67da67152ffa0913",
    "postfix.conf": "dc016f69a10684bb80a9b9022a9e222e07a4268cb814a3c642c888baec9c372f",
    "proftpd.conf": "84ea809bef4fcbf62e721cbd1ed489eea67017d135995241f759eb39734a1967",
    "pure-ftpd.conf": "2c777c62463df90f20a2daeeed9fe64cb16f6b83a3aab871f4729341a6854de1",
    "qmail.conf": "9cf71169b33d4ac22080ed7881b6cd600ea5237a423a48153ecb7fa9d3393fda",
    "recidive.conf": "bb7571cf7dbd633bc41a512fa2aa1575fd90363dc8bec3967f35e852a424702f",
    "roundcube-auth.conf": "dcbc44055e4cd4dae7189d574824bbb2f29b7070ff03a817bc87a45e039c9515",
    "scanlogd.conf": "a568abcd9ee0366548326fd75fae8b87eab883404b30a4c4155c3e533468b09a",
    "screensharingd.conf": "fa8349d841b51e9bdb1930a02f1d2686d2597eb01ed8bde247fa9f91640e2c5a",
    "selinux-common.conf": "4fd3cd0af17833297b7dc0152baa3d1c703a7c2d1b34b68d038f7d99148af9eb",
    "selinux-ssh.conf": "18990a5b8ef3ac715174566f5d3019d2bcda4b2c06f79056ec216ce4034d2efa",
    "sendmail-auth.conf": "3397bcc06c3a5e20855113b13ad709f82743b931fcf72c596598f149eade0fa5",
    "sendmail-reject.conf": "1f2388b6d81c13d868b850dba337dc28f708c6c19a1ae9871e525cd4479a0969",
    "sieve.conf": "0923f00baa1949c2dc9d0910b8e398976d3a466707d44006b8a25d77e42c8fd0",
    "slapd.conf": "6514230b6117ae8f41d9577f8e3ebc84912ca3fa0bc4273bc9d97c7136153de1",
    "softethervpn.conf": "dd7f150b533214846ad18512f61ff35c55817721c2bc9296263314289c255092",
    "sogo-auth.conf": "ea7d5477ea944268de750e3d43df0e41d10ad35eb70fccbcf476b1de9c1f6d9b",
    "solid-pop3d.conf": "39c78305a03231307c18d2d86df4ebdcdc96656bd3bc86e97323a8248b0053d3",
    "squid.conf": "615f73a840ccca37d5f347a529b226a72146f66075936b746fe182411c2315eb",
    "squirrelmail.conf": "cf80d637f26378a551ed03e6d052909a2bd025d305b81432baeaac35251b6d64",
    "sshd.conf": "bc1e66be4a49b9e36adca44c3596e382905ddf19159a038f7d4ebeccf24f65ff",
    "stunnel.conf": "f2a94cd1de520c81dd062ab75cace1adb219deb55faf68a55db9d3c2dfb0d322",
    "suhosin.conf": "c58dceba554b19ceff366af194dda2da88f0f98daa83b3ec4817904ec4df3ef2",
    "tine20.conf": "d9c361904cc3d374ebdb3dda52dda8ee830e4b94ef21c7848256edb80b01c66a",
    "traefik-auth.conf": "4596e4bd65e2e92c3f8bb5adf2c3edf0b19e2ff9fd2bd0dd4f65d46c6457854f",
    "uwimap-auth.conf": "345c783de64def9bbbb976e3b8c3e06f78efb1131fd70431af8d9446acd0d01b",
    "vsftpd.conf": "08f8cc1163825aac8d3b30a2432c6b92a74e504685914189a5ef274a84514d64",
    "webmin-auth.conf": "66d047211b65359e2bb14cd9a841ea8aa6e00e4114fe00572ded4d7347295428",
    "wuftpd.conf": "dea72e1c6ce1ae6fb90eab3e298f853e1145c6c21c159ea54d65f315ce3c29a6",
    "xinetd-fail.conf": "861ba75cbae453f9acd2690e531b309e7e261ef790d154c64691b4358a7aa624",
    "znc-adminlog.conf": "6b130e1d099f37bc95adbb2f1f3ed3619b0b1e553a6c5aa3cfde3811fc94fce4",
    "zoneminder.conf": "9263e4a34ed78a91a7eebff3bb560e47d136032158072f77ccbf1443c8c7dc42",
}


def table(confdir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((confdir / "filter.d").glob("*.conf"))}


if __name__ == "__main__":
    for name, digest in table(Path(sys.argv[1])).items():
        print(f'    "{name}": "{digest}",')
